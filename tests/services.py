"""The product's services under test (`iot gateway`, `iot backend`): the harness's launcher, plus
what a test asks of them.

A `ServiceProcess` runs `iot <command>` with an explicit environment, appends its output to a log
file (printed by the fixtures when a test fails), and knows its metrics endpoint from the port
variable in that environment. Suites subclass it only to say when their service is ready.
"""

from __future__ import annotations

from pathlib import Path

from iot.harness.children import IOT, Child

REPO = Path(__file__).resolve().parents[1]

__all__ = ["IOT", "REPO", "ServiceProcess"]


class ServiceProcess(Child):
    command = ""  # the `iot` subcommand
    port_variable = ""  # the environment variable holding its metrics port

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(
            self.command,
            [IOT, self.command],
            log_path,
            env,
            cwd=REPO,
            metrics_port=int(env[self.port_variable]),
        )

    @property  # type: ignore[override]
    def metrics_port(self) -> int:
        return int(self.env[self.port_variable])

    @metrics_port.setter
    def metrics_port(self, port: int | None) -> None:
        """A new port takes effect at the next start (a restarted worker binds a fresh one)."""
        if port is not None:
            self.env[self.port_variable] = str(port)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and its exit code; a service that ignores it fails the test."""
        code = self.stop(timeout)
        if self.stopped_by_kill:
            raise AssertionError(f"{self.command} ignored SIGTERM {timeout}s:\n{self.log()}")
        return code

"""The one way tests launch a product service (`iot gateway`, `iot backend`) as a real process.

A `ServiceProcess` runs `.venv/bin/iot <command>` with an explicit environment, appends its output
to a log file (printed by the fixtures when a test fails), and knows its metrics endpoint from the
port variable in that environment. Suites subclass it only to say when their service is ready.
"""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import scrape, wait_for

REPO = Path(__file__).resolve().parents[1]
IOT = REPO / ".venv" / "bin" / "iot"


class ServiceProcess:
    command = ""  # the `iot` subcommand
    port_variable = ""  # the environment variable holding its metrics port

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_port(self) -> int:
        return int(self.env[self.port_variable])

    @metrics_port.setter
    def metrics_port(self, port: int) -> None:
        self.env[self.port_variable] = str(port)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def launch(self) -> None:
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [str(IOT), self.command], env=self.env, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO
            )

    def running(self) -> bool:
        """True while the process runs; raises with its log if it exited (a start-up failure)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return True

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, ready: object, timeout: float, what: str) -> None:
        wait_for(lambda: self.running() and ready(), timeout, what)  # type: ignore[operator]

    def metrics(self) -> dict[str, float]:
        """Every sample by `name{labels}`; empty when the endpoint does not answer."""
        return scrape(self.metrics_url)

    def metric(self, name: str) -> float | None:
        return self.metrics().get(name)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code; a service that ignores it fails the test."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"{self.command} ignored SIGTERM {timeout}s:\n{self.log()}") from None
        return self.proc.returncode

    def stop(self) -> None:
        """Stop it whatever it does (teardown): SIGTERM, then SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

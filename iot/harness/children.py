"""The one launcher of child processes: the product's services (`iot gateway`, `iot backend`, `iot
boards`), load generators, brokers.

A `Child` runs in a session of its own (a terminal's Ctrl-C reaches the parent, which decides when
children stop, and a signal to the child reaches its whole process group), appends its output to a
log file, and is killed by the kernel when its parent dies, so a killed test, benchmark or demo leaves
nothing running. `wait_ready` polls a condition with a deadline and fails with the log's tail as soon
as the child exits; `stop` sends SIGTERM (the services drain and exit 0 on it) and SIGKILL after a
timeout; `kill` is the crash a power cut or the OOM killer causes.

`Children` is a group started together and stopped in reverse order (`iot demo`, the rig's stack,
the end-to-end tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iot import log
from iot.harness import metrics
from iot.harness.errors import ChildFailed

__all__ = ["IOT", "Child", "Children", "cpu_s", "die_with_parent", "gateway_connected", "rss_kb", "run"]

_log = log.get("iot.harness")
# The `iot` console script of the environment this Python runs in.
IOT = str(Path(sys.executable).with_name("iot"))
_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child only calls it, it does not load a library between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child before exec: the kernel sends it `sig` when the parent goes (PR_SET_PDEATHSIG).

    The kernel means the parent *thread*: a child started from a thread that then ends is signalled
    too, so long-lived children are started from threads that live as long as the need for them."""
    _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def rss_kb(pid: int | None) -> int | None:
    """Resident memory of a process (kB), None when it is gone or unreadable."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process used so far (its threads included), None when gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def run(
    argv: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    grace: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end and return its exit code and output. Past `timeout` it gets SIGTERM,
    so it stops what it started itself (a rig its boards, a soak its private stack), and SIGKILL
    `grace` seconds later; its exit code then says so and its output so far is returned."""
    proc = subprocess.Popen(
        list(argv),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _log.warning("command_stopped", command=argv[0], why=f"still running after {timeout:.0f}s")
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def gateway_connected(gateway: Child) -> bool:
    """A gateway is ready once it reports its MQTT connection up."""
    return gateway.metric("iot_gateway_mqtt_connected") == 1.0


class Child:
    """One child process; `argv` is a program and its arguments (`Child.iot` builds `iot <args>`).

    `metrics_port` is where it serves Prometheus metrics, if it does; `env` is its whole environment
    (None: this process's). `interactive`: its stdin and stdout are text pipes to the parent
    (commands in, lines out: `proc.stdin`, `proc.stdout`), only stderr goes to the log."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        metrics_port: int | None = None,
        dies_with_parent: bool = True,
        interactive: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.metrics_port = metrics_port
        self.dies_with_parent = dies_with_parent
        self.interactive = interactive
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0
        self.stopped_by_kill = False  # the last `stop` had to SIGKILL: SIGTERM was ignored

    @classmethod
    def iot(cls, name: str, args: Sequence[str], log_path: Path, **kwargs: object) -> Child:
        """`iot <args>`: a service exactly as users start it."""
        return cls(name, [IOT, *args], log_path, **kwargs)  # type: ignore[arg-type]

    # --- start ------------------------------------------------------------------------------------
    def start(self) -> Child:
        if self.alive():
            raise ChildFailed(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        pipe = subprocess.PIPE if self.interactive else None
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=pipe or subprocess.DEVNULL,
                stdout=pipe or logf,
                stderr=logf if self.interactive else subprocess.STDOUT,
                text=self.interactive,
                start_new_session=True,
                preexec_fn=die_with_parent if self.dies_with_parent else None,
            )
        self.starts += 1
        _log.info("child_started", child=self.name, pid=self.proc.pid, log=self.log_path)
        return self

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str = "ready") -> Child:
        """Poll `ready` until it holds; ChildFailed with the log's tail if the child exits first or
        `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise ChildFailed(f"{self.name} exited with {code}; its log:\n{self.log_tail()}")
            if ready():
                return self
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} not {what} after {timeout:.0f}s; its log:\n{self.log_tail()}")
            time.sleep(0.1)

    # --- state ------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid while it runs, else None."""
        return self.proc.pid if self.alive() and self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid)

    def cpu_s(self) -> float | None:
        return cpu_s(self.pid)

    # --- stop -------------------------------------------------------------------------------------
    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to its process group, SIGKILL after `timeout`; returns the exit code (None: never
        started)."""
        self.stopped_by_kill = False
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("child_killed", child=self.name, why=f"no exit {timeout:.0f}s after SIGTERM")
                self.stopped_by_kill = True
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        _log.info("child_stopped", child=self.name, code=self.proc.returncode)
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for it to exit by itself (it was told to, e.g. on its stdin); SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log.warning("child_killed", child=self.name, why=f"no exit {timeout:.0f}s after being told")
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, at once: no chance to flush or acknowledge anything."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    # --- what it says -----------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().rstrip().splitlines()[-lines:])

    @property
    def metrics_url(self) -> str:
        if self.metrics_port is None:
            raise ChildFailed(f"{self.name} has no metrics port")
        return metrics.url(self.metrics_port)

    def metrics(self, *only: str) -> dict[str, float]:
        """Every sample by `name{labels}` (or only those named); empty when it does not answer."""
        return metrics.scrape(self.metrics_url, only)

    def metric(self, name: str) -> float | None:
        """The sum of a metric's samples over every label set; None when absent or unreachable."""
        return metrics.total(self.metrics_url, name)

    def answers(self) -> bool:
        """True once its metrics endpoint answers."""
        return metrics.answers(self.metrics_url)


class Children:
    """Children started together (each logging to `log_dir/<name>.log`), stopped in reverse order."""

    def __init__(self, log_dir: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> Child:
        """Start `iot <args>` (or a program, when args[0] is an absolute path) with the base
        environment and `env` over it."""
        argv = list(args) if args[0].startswith("/") else [IOT, *args]
        child = Child(
            name,
            argv,
            self.log_dir / f"{name}.log",
            {**self.base_env, **(env or {})},
            metrics_port=metrics_port,
        )
        self.children.append(child.start())
        return child

    def start_gateway(
        self, name: str, env: Mapping[str, str], metrics_port: int, timeout: float = 60.0
    ) -> Child:
        """`iot gateway` serving metrics on `metrics_port`, once it reports its MQTT connection up."""
        child = self.start(
            name, ["gateway"], {**env, "IOT_GATEWAY_METRICS_PORT": str(metrics_port)}, metrics_port
        )
        return child.wait_ready(lambda: gateway_connected(child), timeout, "connected to the broker")

    def start_backend(
        self, name: str, env: Mapping[str, str], metrics_port: int, timeout: float = 90.0
    ) -> Child:
        """`iot backend` serving metrics on `metrics_port`, once that endpoint answers (Faust has
        started: its agents run once the web server is up)."""
        child = self.start(
            name, ["backend"], {**env, "IOT_BACKEND_METRICS_PORT": str(metrics_port)}, metrics_port
        )
        return child.wait_ready(child.answers, timeout, "serving metrics")

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

"""Run the product's own services (gateway, backend, boards) as child processes and stop them cleanly.

Used by `iot demo` and by the end-to-end tests, so both exercise the services exactly as users start
them: through the `iot` console script, configured by environment variables.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from iot import log

_log = log.get("iot.supervise")
IOT_SCRIPT = str(Path(sys.executable).with_name("iot"))


class ChildFailed(RuntimeError):
    """A child service exited or did not become ready; the message carries its log tail."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class Supervisor:
    log_dir: Path
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Child:
        """Start `iot <args>` (or an absolute program when args[0] starts with '/')."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = args if args[0].startswith("/") else [IOT_SCRIPT, *args]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as logf:
            proc = subprocess.Popen(
                argv,
                env={**self.base_env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        _log.info("child_started", child=name, pid=proc.pid, log=log_path)
        return child

    def wait_ready(self, child: Child, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise ChildFailed(
                    f"{child.name} exited with {child.proc.returncode}; its log:\n{child.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ChildFailed(f"{child.name} not ready after {timeout:.0f}s; its log:\n{child.log_tail()}")

    def stop(self, child: Child, timeout: float = 20.0) -> int | None:
        """SIGTERM (the services drain and exit 0 on it), SIGKILL after timeout. Returns the exit code."""
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("child_killed", child=child.name, why=f"no exit {timeout:.0f}s after SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(10)
        if child in self.children:
            self.children.remove(child)
        _log.info("child_stopped", child=child.name, code=child.proc.returncode)
        return child.proc.returncode

    def kill9(self, child: Child) -> None:
        """The crash a power cut or OOM killer causes: no chance to flush or ack."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait(10)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


def endpoint_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def metrics_value(url: str, name: str) -> float | None:
    """The sum of a metric's samples on a Prometheus text endpoint, None when unreachable or absent."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None

"""Pid-tracked background processes: each service has a folder with `pid`, `log` and its data.

A pid file records the pid and a marker from the command line, so a recycled pid that now belongs to
some other program is never taken for ours (and never signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Tracked:
    pid: int
    marker: str


def argv_of(pid: int) -> list[str]:
    """The command line a running process was started with ([] when it cannot be read)."""
    # Right after fork/exec the kernel has closed our exec pipe (so Popen returned) but may not yet
    # have set up the new argument pages: cmdline reads empty for a moment, longer for large binaries.
    for _ in range(40):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        if raw:
            return raw.decode(errors="replace").split("\0")[:-1]
        time.sleep(0.025)
    return []


def _cmdline(pid: int) -> str:
    return " ".join(argv_of(pid))


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def read(pid_file: Path) -> Tracked | None:
    """The tracked process if it is still alive and still ours, else None."""
    try:
        data = json.loads(pid_file.read_text())
        tracked = Tracked(pid=int(data["pid"]), marker=str(data["marker"]))
    except (OSError, ValueError, KeyError):
        return None
    if _is_zombie(tracked.pid) or tracked.marker not in _cmdline(tracked.pid):
        return None
    return tracked


def start(argv: list[str], marker: str, folder: Path, env: dict[str, str] | None = None) -> Tracked:
    """Start argv detached in its own session, logging to folder/log; record it in folder/pid."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "log").open("ab") as logf:
        logf.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tracked = Tracked(pid=proc.pid, marker=marker)
    (folder / "pid").write_text(json.dumps({"pid": proc.pid, "marker": marker}) + "\n")
    return tracked


def exited_early(tracked: Tracked) -> bool:
    return _is_zombie(tracked.pid) or tracked.marker not in _cmdline(tracked.pid)


def reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_until_gone(tracked: Tracked, sig: int, timeout: float) -> bool:
    """Send `sig` to the tracked process group and wait up to `timeout` for it to be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(tracked.pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(tracked.pid)
        if exited_early(tracked):
            return True
        time.sleep(0.02)
    return False


def stop(pid_file: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the tracked process group, SIGKILL after timeout. True if something was stopped."""
    tracked = read(pid_file)
    if tracked is None:
        pid_file.unlink(missing_ok=True)
        return False
    if not _signal_until_gone(tracked, signal.SIGTERM, timeout):
        _signal_until_gone(tracked, signal.SIGKILL, 10.0)
    pid_file.unlink(missing_ok=True)
    return True


def kill(pid_file: Path, timeout: float = 10.0) -> int | None:
    """SIGKILL the tracked process group at once (fault injection: no chance to save state), wait for
    it to be gone and forget it; returns its pid, or None when nothing of ours was running."""
    tracked = read(pid_file)
    if tracked is None:
        return None
    _signal_until_gone(tracked, signal.SIGKILL, timeout)
    pid_file.unlink(missing_ok=True)
    return tracked.pid


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])

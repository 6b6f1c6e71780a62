"""What every part of bench/soak.py shares: paths, logging, polling with a deadline, ports, /proc and
Prometheus readings of the processes it watches."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
IOT = str(REPO / ".venv" / "bin" / "iot")
PYTHON = sys.executable
BACKEND_APP = "soak-backend"
DATABASE = "soak"
_CLK_TCK = 100  # os.sysconf("SC_CLK_TCK") on Linux


def log(event: str, **fields: Any) -> None:
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} soak {event} {parts}\n")
    sys.stderr.flush()


def poll_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> bool:
    """Poll with a deadline; False (logged) when it passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    log("timeout", waiting_for=what.replace(" ", "_"), seconds=timeout)
    return False


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the soak dies, so a killed soak leaves no gateway,
    backend or fleet behind (the stack's own services it stops in its `finally`)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def rss_kb(pid: int | None) -> int | None:
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
    """User + system CPU seconds the process used so far (its threads included)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def cpu_pressure() -> float | None:
    """Total microseconds some runnable task waited for a CPU (Linux PSI), or None without PSI."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return float(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None

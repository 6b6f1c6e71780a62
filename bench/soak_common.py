"""What every part of bench/soak.py shares: paths, logging, polling with a deadline, CPU pressure.
(Processes, ports, RSS, CPU and metrics are the harness's: iot/harness/.)"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PYTHON = sys.executable
BACKEND_APP = "soak-backend"
DATABASE = "soak"


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


def cpu_pressure() -> float | None:
    """Total microseconds some runnable task waited for a CPU (Linux PSI), or None without PSI."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return float(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None

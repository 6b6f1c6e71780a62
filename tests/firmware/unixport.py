"""Run a MicroPython snippet on the unix port with the firmware and the sensor models importable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from hil import paths
from iot.harness import children


def run(
    code: str, workdir: Path, heap: str = "110K", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    script = workdir / "snippet.py"
    script.write_text(code)
    env = dict(os.environ, MICROPYPATH=f"{paths.FIRMWARE}:{paths.VIRTUAL}")
    argv = [paths.venv_tool("micropython"), "-X", f"heapsize={heap}", str(script)]
    return children.run(argv, timeout, env, workdir)


def run_json(code: str, workdir: Path, heap: str = "110K", timeout: float = 120) -> Any:
    """Run code that prints one JSON document as its last line; returns it parsed."""
    proc = run(code, workdir, heap, timeout)
    assert proc.returncode == 0, f"micropython failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])

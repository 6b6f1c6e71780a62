"""firmware/manifest.py freezes every firmware module but boot.py and main.py (the port runs those
from the file system), and nothing else of ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hil import paths

pytestmark = pytest.mark.unit


def _run_manifest(path: Path) -> dict[str, list[Any]]:
    """Execute a manifest as MicroPython's tools/manifestfile.py does (its commands as globals,
    paths relative to the manifest's folder) and record the commands."""
    calls: dict[str, list[Any]] = {"include": [], "module": [], "package": [], "freeze": [], "require": []}

    def command(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            calls[name].append((args, kwargs))

        return record

    scope = {name: command(name) for name in calls}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return calls


def test_manifest_freezes_every_firmware_module_but_boot_and_main_and_keeps_the_ports_own() -> None:
    calls = _run_manifest(paths.FIRMWARE / paths.MANIFEST)
    assert calls["include"] == [(("$(PORT_DIR)/boards/manifest.py",), {})]  # ntptime and the rest
    assert calls["package"] == calls["freeze"] == calls["require"] == []
    frozen = []
    for args, kwargs in calls["module"]:
        assert not kwargs and len(args) == 1  # base_path: the manifest's folder, firmware/
        frozen.append(args[0])
        assert (paths.FIRMWARE / args[0]).is_file(), args[0]
    modules = {p.name for p in paths.firmware_files()} - set(paths.ENTRY_FILES)
    missing, extra = modules - set(frozen), set(frozen) - modules
    assert not missing and not extra, f"manifest misses {missing}, lists {extra}"
    assert len(frozen) == len(set(frozen))


def test_manifest_is_not_a_firmware_module() -> None:
    """iot flash copies firmware_files() to a board: the manifest is a build file, not among them."""
    assert paths.MANIFEST not in {p.name for p in paths.firmware_files()}

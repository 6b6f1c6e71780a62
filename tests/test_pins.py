"""The guards around library internals fail loudly, naming what to re-check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iot import pins

pytestmark = pytest.mark.unit


class _Owner:
    hook = None

    def __init__(self) -> None:
        self._made: int = 0
        self._compared = self._made == 0

    def check(self) -> bool:
        return self._never_set == 1  # type: ignore[attr-defined]  # a comparison, not an assignment


def test_a_different_minor_version_names_the_upgrade_to_recheck() -> None:
    with pytest.raises(pins.PinError, match=r"pytest .* written for 0\.1\.x: re-check it"):
        pins.require("pytest", "0.1", [], "the example workaround")


def test_a_missing_private_hook_is_named() -> None:
    installed = pins.metadata.version("pytest")
    minor = ".".join(installed.split(".")[:2])
    pins.require("pytest", minor, [(_Owner, "hook")], "the example workaround")
    with pytest.raises(pins.PinError, match=r"_Owner\.gone, which the example workaround relies on"):
        pins.require("pytest", minor, [(_Owner, "hook"), (_Owner, "gone")], "the example workaround")


def test_an_instance_attribute_counts_when_the_class_assigns_it() -> None:
    installed = pins.metadata.version("pytest")
    minor = ".".join(installed.split(".")[:2])
    pins.require("pytest", minor, [(_Owner, "_made"), (_Owner, "_compared")], "the example workaround")
    with pytest.raises(pins.PinError, match=r"_Owner\._never_set"):
        pins.require("pytest", minor, [(_Owner, "_never_set")], "the example workaround")


def _import(modules: list[str], fake: str = "") -> subprocess.CompletedProcess[str]:
    """Import `modules` in a fresh interpreter (a module's guard runs once, at its first import);
    `fake`: that distribution reports version 0.0.1."""
    code = "import importlib.metadata as m\n"
    if fake:
        code += f"real = m.version\nm.version = lambda d: '0.0.1' if d == {fake!r} else real(d)\n"
    code += "".join(f"import {module}\n" for module in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


GUARDED = {
    "gateway.paho_client": "paho-mqtt",
    "gateway.batched_writes": "paho-mqtt",
    "gateway.read_buffer": "paho-mqtt",
    "gateway.take_gate": "paho-mqtt",
    "backend.transport": "aiokafka",
    "backend.topics": "faust-streaming",
}


def test_the_installed_libraries_pass_every_guard() -> None:
    done = _import(list(GUARDED))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("module", "distribution"), GUARDED.items())
def test_importing_a_guarded_module_checks_its_librarys_version(module: str, distribution: str) -> None:
    """Was: the modules were already imported by the suite, so their guards never ran here, and
    the assertion (two classes are truthy) could not fail."""
    done = _import([module], fake=distribution)
    assert done.returncode == 1 and "PinError" in done.stderr, done.stderr[-2000:]
    assert f"{distribution} 0.0.1 is installed" in done.stderr

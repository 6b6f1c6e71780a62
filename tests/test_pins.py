"""The guards around library internals fail loudly, naming what to re-check."""

from __future__ import annotations

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


def test_the_installed_faust_and_paho_pass_their_guards() -> None:
    import backend.transport
    import gateway.paho_client

    assert backend.transport.Transport and gateway.paho_client.BatchingClient

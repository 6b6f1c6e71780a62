"""Guards for the places where the product relies on a library's private internals.

The backend corrects Faust's aiokafka transport and reads Faust tables' in-memory data; the gateway
overrides paho-mqtt's socket I/O. Those workarounds were written against one minor version each
(pinned in pyproject.toml). At import, `require` checks that the installed version is that minor and
that every private hook still exists, and otherwise stops with a message naming the upgrade to re-check,
instead of letting a changed internal lose readings silently.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from importlib import metadata

from iot.errors import IotError

__all__ = ["PinError", "require"]


class PinError(IotError):
    """An installed library is not the version our workarounds for its internals were written for."""


def require(distribution: str, minor: str, hooks: Iterable[tuple[object, str]], why: str) -> None:
    """Check `distribution` is version `minor`.* and each `(owner, attribute)` hook exists: a class
    attribute, or an instance attribute the class (or a base) assigns as `self.<attribute> = ...`.

    `why` names the module whose workaround depends on them, for the message.
    """
    installed = metadata.version(distribution)
    if not (installed == minor or installed.startswith(minor + ".")):
        raise PinError(
            f"{distribution} {installed} is installed, but {why} was written for {minor}.x: re-check it "
            f"against {distribution} {installed}, then move the pin in pyproject.toml"
        )
    missing = [
        f"{getattr(owner, '__qualname__', owner)}.{attribute}"
        for owner, attribute in hooks
        if not _has(owner, attribute)
    ]
    if missing:
        raise PinError(
            f"{distribution} {installed} no longer has {', '.join(missing)}, which {why} relies on: "
            "re-check that workaround before upgrading"
        )


def _has(owner: object, attribute: str) -> bool:
    if hasattr(owner, attribute):
        return True
    # Instance attributes exist only on instances: look for their assignment in the source.
    assigned = re.compile(rf"\bself\.{re.escape(attribute)}\s*(:[^=\n]*)?=(?!=)")
    for cls in getattr(owner, "__mro__", ()):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # a builtin or C class: no source to read
            continue
        if assigned.search(source):
            return True
    return False

"""The exception tree is complete: every exception class of the product derives from IotError (so the
`iot` command reports it as `Type: message`), is drawn in iot/errors.py's docstring, and no two
unrelated ones share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from iot import errors
from iot.errors import IotError

pytestmark = pytest.mark.unit

PACKAGES = ("iot", "gateway", "backend", "hil", "fleetops")
# Code that runs on a board (the MicroPython unix port) and cannot import the kernel; hil.virtual.env
# runs on both sides and joins the tree on CPython.
ON_THE_BOARD = ("hil.virtual.", "hil.vserial.")
BOARD_AND_HOST = ("hil.virtual.env",)


def product_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            name = info.name
            if name.endswith(".__main__"):  # an entry point: importing it runs the command
                continue
            if name.startswith(ON_THE_BOARD) and name not in BOARD_AND_HOST:
                continue
            names.append(name)
    return names


def exception_classes() -> list[type[BaseException]]:
    found = []
    for name in product_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found.append(obj)
    return found


def test_every_exception_of_the_product_derives_from_iot_error() -> None:
    classes = exception_classes()
    assert len(classes) >= 20, [c.__name__ for c in classes]  # the walk found the packages' errors
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, IotError)]
    assert outside == []


def test_the_tree_in_iot_errors_names_every_exception() -> None:
    drawing = errors.__doc__ or ""
    missing = [f"{c.__module__}.{c.__qualname__}" for c in exception_classes() if c.__name__ not in drawing]
    assert missing == []


def test_exceptions_of_one_name_are_one_exception() -> None:
    """Two unrelated `StackError`s read the same in a `Type: message` line and cannot be told apart."""
    by_name: dict[str, list[type[BaseException]]] = {}
    for c in exception_classes():
        by_name.setdefault(c.__name__, []).append(c)
    clashes = [
        [f"{c.__module__}.{c.__qualname__}" for c in same]
        for same in by_name.values()
        if any(not (issubclass(a, b) or issubclass(b, a)) for a in same for b in same)
    ]
    assert clashes == []


def test_config_errors_are_config_errors() -> None:
    from backend.errors import ConfigError as BackendConfigError
    from gateway.errors import SettingsError
    from hil.errors import RigConfigError

    for cls in (SettingsError, BackendConfigError, RigConfigError):
        assert issubclass(cls, errors.ConfigError), cls
    assert str(RigConfigError("boards[0].id", "is required")) == "field 'boards[0].id': is required"

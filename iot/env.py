"""Reading configuration from the environment: the one reader every service and command uses.

Blank values count as unset (compose files and `.env` templates leave variables empty). Every problem
raises `iot.errors.ConfigError` naming the variable, or the package's own subclass of it, so a bad
setting stops a service with a message that says which variable to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from iot import contract
from iot.errors import ConfigError

__all__ = ["EnvReader"]


class EnvReader:
    """Typed, validated look-ups in one environment mapping.

    `error` is the ConfigError subclass to raise (a package's own, so its CLI reports it by name).
    Defaults for the contract's variables come from `contract.ENV_DEFAULTS` when none is given.
    """

    def __init__(self, env: Mapping[str, str] | None = None, error: type[ConfigError] = ConfigError) -> None:
        self._env = os.environ if env is None else env
        self._error = error

    def fail(self, name: str, problem: str) -> ConfigError:
        return self._error(name, problem)

    def optional(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str | None = None) -> str:
        value = self.optional(name)
        if value is not None:
            return value
        if default is None:
            default = contract.ENV_DEFAULTS.get(name)
        if default is None:
            raise self.fail(name, "is required")
        return default

    def integer(
        self, name: str, default: int | None = None, low: int | None = None, high: int | None = None
    ) -> int:
        raw = self.optional(name)
        if raw is None:
            value = int(self.text(name)) if default is None else default
        else:
            try:
                value = int(raw)
            except ValueError:
                raise self.fail(name, f"{raw!r} is not an integer") from None
        self._bounds(name, value, low, high)
        return value

    def number(
        self, name: str, default: float | None = None, low: float | None = None, high: float | None = None
    ) -> float:
        raw = self.optional(name)
        if raw is None:
            value = float(self.text(name)) if default is None else default
        else:
            try:
                value = float(raw)
            except ValueError:
                raise self.fail(name, f"{raw!r} is not a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise self.fail(name, f"{raw!r} is not a finite number")
        self._bounds(name, value, low, high)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise self.fail(name, f"{raw!r} is not a boolean (true/false)")

    def path(self, name: str) -> str | None:
        """An optional path to an existing file."""
        value = self.optional(name)
        if value is not None and not os.path.isfile(value):
            raise self.fail(name, f"file {value!r} does not exist")
        return value

    def port(self, name: str, default: int) -> int:
        """A TCP port; 0 means "off" (or "any free port" where the caller says so)."""
        return self.integer(name, default, 0, 65535)

    def _bounds(self, name: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and high is not None and not low <= value <= high:
            raise self.fail(name, f"{value:g} is outside {low:g}..{high:g}")
        if low is not None and value < low:
            raise self.fail(name, f"{value:g} must be >= {low:g}")
        if high is not None and value > high:
            raise self.fail(name, f"{value:g} must be <= {high:g}")


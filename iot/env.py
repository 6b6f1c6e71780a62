"""Reading configuration from the environment: the one reader every service and command uses.

Blank values count as unset (compose files and `.env` templates leave variables empty). Every problem
raises `iot.errors.ConfigError` naming the variable, or the package's own subclass of it, so a bad
setting stops a service with a message that says which variable to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from iot import contract
from iot.errors import ConfigError

__all__ = ["EnvReader", "MqttEndpoint", "parse_mqtt_url", "stack_dir"]

MQTT_PORT = 1883
MQTTS_PORT = 8883


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where an MQTT broker is: `mqtt://host[:1883]` or, with TLS, `mqtts://host[:8883]`."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(
    url: str, name: str = "IOT_MQTT_URL", error: type[ConfigError] = ConfigError
) -> MqttEndpoint:
    """The one parser of broker URLs (gateway, boards, probes); `error(name, ...)` on a bad one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise error(name, f"{url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise error(name, f"scheme must be mqtt:// or mqtts://, got {parts.scheme!r}")
    if parts.username or parts.password:
        # Credentials in a URL end up in process listings and logs.
        raise error(name, "put credentials in IOT_MQTT_USERNAME/IOT_MQTT_PASSWORD")
    if not parts.hostname:
        raise error(name, f"{url!r} has no host")
    tls = parts.scheme == "mqtts"
    return MqttEndpoint(parts.hostname, port or (MQTTS_PORT if tls else MQTT_PORT), tls)


def stack_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the native stack keeps its state (data, logs, its credentials file): IOT_STACK_DIR, else
    `.stack/` in the checkout, or ~/.local/state/iot for an installed package."""
    env = os.environ if env is None else env
    root = Path(__file__).resolve().parents[1]
    default = root / ".stack" if (root / "pyproject.toml").exists() else Path.home() / ".local/state/iot"
    return Path(env.get("IOT_STACK_DIR") or default).absolute()


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

    def mqtt_url(self, name: str = "IOT_MQTT_URL") -> MqttEndpoint:
        """A broker URL (default from the contract): host, port and whether it is TLS."""
        return parse_mqtt_url(self.text(name), name, self._error)

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


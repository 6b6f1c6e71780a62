"""Configuration from the environment: every variable declared once, read by one reader.

A command declares the variables it reads as `Var`s (name, default as an operator writes it, what it
does) grouped in `Variables`; its `--help` lists them with their defaults (`Variables.help`), and its
settings object is built by the `EnvReader` those declarations make, which takes every default from
the declaration: a default is written once. The contract's variables take theirs from
`contract.ENV_DEFAULTS` (`CONTRACT`).

Blank values count as unset (compose files and `.env` templates leave variables empty). Every problem
raises `iot.errors.ConfigError` naming the variable, or the package's own subclass of it, so a bad
setting stops a command with one line that says which variable to fix. Secrets are `Secret`s: their
repr and str never show the value, so a settings object can be logged whole.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import tempfile
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from iot import contract
from iot.errors import ConfigError

__all__ = [
    "CONTRACT",
    "LOG",
    "EnvReader",
    "MqttEndpoint",
    "Secret",
    "Var",
    "Variables",
    "parse_mqtt_url",
    "stack_dir",
    "with_database",
    "writable_dir",
]

MQTT_PORT = 1883
MQTTS_PORT = 8883


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Var:
    """One environment variable. `default` is the value as an operator would write it; None means
    "unset" (an optional setting) or a default the reader computes, which `shown` then describes."""

    name: str
    default: str | None
    doc: str
    secret: bool = False
    shown: str | None = None

    def display_default(self) -> str:
        if self.shown is not None:
            return self.shown
        return "unset" if self.default is None else self.default


class Variables:
    """The variables one command reads, in the order its `--help` lists them. Groups nest: a
    command's set is built from shared ones (`CONTRACT`, `iot.kafka.VARIABLES`, …) plus its own."""

    def __init__(self, *items: Var | Variables) -> None:
        self._vars: dict[str, Var] = {}
        for item in items:
            for var in item if isinstance(item, Variables) else (item,):
                known = self._vars.get(var.name)
                if known is not None and known != var:
                    raise ValueError(f"{var.name} declared twice, differently")
                self._vars[var.name] = var

    def __iter__(self) -> Iterator[Var]:
        return iter(self._vars.values())

    def __contains__(self, name: object) -> bool:
        return name in self._vars

    def __len__(self) -> int:
        return len(self._vars)

    def get(self, name: str) -> Var | None:
        return self._vars.get(name)

    def __getitem__(self, name: str) -> Var:
        return self._vars[name]

    def pick(self, *names: str) -> Variables:
        """Some of these variables (a command that reads only part of a shared group)."""
        return Variables(*(self._vars[name] for name in names))

    def names(self) -> list[str]:
        return list(self._vars)

    def reader(
        self, env: Mapping[str, str] | None = None, error: type[ConfigError] = ConfigError
    ) -> EnvReader:
        return EnvReader(env, error, self)

    def help(self, title: str = "environment variables (default)", width: int = 100) -> str:
        """The variables as an argparse epilog (use RawDescriptionHelpFormatter): name, default and
        what it does, one variable a paragraph."""
        lines = [f"{title}:"]
        for var in self:
            head = f"  {var.name} ({var.display_default()})"
            body = var.doc + (" [secret: never logged]" if var.secret else "")
            lines.extend(
                textwrap.wrap(
                    f"{head}: {body}",
                    width,
                    initial_indent="",
                    subsequent_indent="      ",
                    break_on_hyphens=False,
                )
            )
        return "\n".join(lines)


# Shared by every command.
LOG: Final = Variables(
    Var("IOT_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR (`iot --log-level` wins)"),
)
# The contract's endpoints and windows (docs/CONTRACT.md): defaults from iot/contract.py only.
_CONTRACT_DOCS: Final[Mapping[str, str]] = {
    "IOT_MQTT_URL": "the MQTT broker, mqtt://host[:1883] or mqtts://host[:8883] for TLS",
    "IOT_KAFKA_BOOTSTRAP": "Kafka brokers, host:port[,host:port...]",
    "IOT_MONGO_URI": "MongoDB, mongodb://[user:password@]host[:port]/database",
    "IOT_WINDOW_TUMBLING_S": "tumbling window size, seconds",
    "IOT_WINDOW_HOPPING_S": "hopping window size, seconds",
    "IOT_WINDOW_HOP_STEP_S": "hopping window step, seconds (divides the size)",
    "IOT_WINDOW_GRACE_S": "how long a window waits for late readings before it is final, seconds",
    "IOT_WINDOW_ALLOWED_LATENESS_S": "how far behind its key's event time a reading may still amend a "
    "final window, seconds",
    "IOT_MAX_CLOCK_AHEAD_S": "a board clock further ahead than this is re-stamped (gateway) and bounds "
    "event time (backend), seconds",
}
CONTRACT: Final = Variables(
    *(Var(name, default, _CONTRACT_DOCS[name]) for name, default in contract.ENV_DEFAULTS.items())
)


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
    if port == 0:
        raise error(name, "port 0 is no port a broker listens on")
    tls = parts.scheme == "mqtts"
    return MqttEndpoint(parts.hostname, port or (MQTTS_PORT if tls else MQTT_PORT), tls)


def stack_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the native stack keeps its state (data, logs, its credentials file): IOT_STACK_DIR, else
    `.stack/` in the checkout, or ~/.local/state/iot for an installed package."""
    root = Path(__file__).resolve().parents[1]
    default = root / ".stack" if (root / "pyproject.toml").exists() else Path.home() / ".local/state/iot"
    return Path(EnvReader(env).text("IOT_STACK_DIR", str(default))).absolute()


_HOST: Final = re.compile(r"^[A-Za-z0-9_.-]{1,253}$|^\[[0-9A-Fa-f:.]+\]$")
_MQTT_FILTER_MAX: Final = 65535


class EnvReader:
    """Typed, validated look-ups in one environment mapping.

    `error` is the ConfigError subclass to raise (a package's own, so its CLI reports it by name).
    Defaults come from `variables` (the command's declarations; `CONTRACT` when none are given). A
    caller passes a default of its own only for a variable declared without one (a computed default,
    e.g. the Kafka controller port after the Kafka port) or not declared at all.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        error: type[ConfigError] = ConfigError,
        variables: Variables | None = None,
    ) -> None:
        self._env = os.environ if env is None else env
        self._error = error
        self._vars = CONTRACT if variables is None else variables

    def fail(self, name: str, problem: str) -> ConfigError:
        return self._error(name, problem)

    def optional(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def default(self, name: str, given: object = None) -> str | None:
        """The declared default of `name`, or `given` (as text) for one declared without a default."""
        var = self._vars.get(name)
        declared = None if var is None else var.default
        if declared is not None and given is not None and not _same(str(given), declared):
            # Written twice, they drifted apart: the declaration is the one place for it.
            raise AssertionError(f"{name}: the declared default is {declared!r}, a caller passed {given!r}")
        if declared is not None:
            return declared
        return None if given is None else str(given)

    def text(self, name: str, default: str | None = None) -> str:
        value = self.optional(name)
        if value is not None:
            return value
        fallback = self.default(name, default)
        if fallback is None:
            raise self.fail(name, "is required")
        return fallback

    def secret(self, name: str) -> Secret | None:
        value = self.optional(name)
        return None if value is None else Secret(value)

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        """One of `choices`, compared without case; returns the spelling of `choices`."""
        options = list(choices)
        raw = self.text(name, default)
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise self.fail(name, f"{raw!r} is not one of {', '.join(options)}")

    def integer(
        self, name: str, default: int | None = None, low: int | None = None, high: int | None = None
    ) -> int:
        raw = self.text(name, None if default is None else str(default))
        try:
            value = int(raw)
        except ValueError:
            raise self.fail(name, f"{raw!r} is not an integer") from None
        self._bounds(name, value, low, high)
        return value

    def number(
        self, name: str, default: float | None = None, low: float | None = None, high: float | None = None
    ) -> float:
        raw = self.text(name, None if default is None else repr(default))
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(name, f"{raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(name, f"{raw!r} is not a finite number")
        self._bounds(name, value, low, high)
        return value

    def boolean(self, name: str, default: bool | None = None) -> bool:
        raw = self.text(name, None if default is None else str(default).lower())
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise self.fail(name, f"{raw!r} is not a boolean (true/false)")

    def port(self, name: str, default: int | None = None) -> int:
        """A TCP port; 0 means "off" (or "any free port" where the caller says so)."""
        return self.integer(name, default, 0, 65535)

    def path(self, name: str) -> str | None:
        """An optional path to an existing, readable file."""
        value = self.optional(name)
        if value is None:
            return None
        if not os.path.isfile(value):
            raise self.fail(name, f"file {value!r} does not exist")
        try:
            with open(value, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise self.fail(name, f"cannot read {value!r}: {exc.strerror}") from None
        return value

    def ca_file(self, name: str) -> str | None:
        """An optional CA certificate file (PEM): what a client verifies a server with."""
        value = self.path(name)
        if value is not None:
            try:
                ssl.create_default_context(cafile=value)
            except (ssl.SSLError, ValueError) as exc:
                raise self.fail(
                    name, f"{value!r} holds no CA certificate a client can load ({_ssl_why(exc)})"
                ) from None
        return value

    def cert_and_key(
        self,
        cert_name: str,
        key_name: str,
        password: Secret | None = None,
        password_name: str | None = None,
    ) -> tuple[str | None, str | None]:
        """An optional client certificate and its private key (PEM), which go together. An encrypted
        key needs its password, from `password_name` (without one, the key must not be encrypted)."""
        cert, key = self.path(cert_name), self.path(key_name)
        if (cert is None) != (key is None):
            missing = key_name if key is None else cert_name
            raise self.fail(missing, f"{cert_name} and {key_name} go together")
        if cert is None or key is None:
            return None, None
        try:
            ssl.create_default_context(cafile=cert)
        except (ssl.SSLError, ValueError) as exc:
            raise self.fail(cert_name, f"{cert!r} holds no certificate ({_ssl_why(exc)})") from None
        with open(key, "rb") as f:
            encrypted = b"ENCRYPTED" in f.read(4096)
        if encrypted and password is None:
            if password_name is None:
                raise self.fail(key_name, f"{key!r} is encrypted; this client takes an unencrypted key")
            raise self.fail(password_name, f"is required: {key_name} {key!r} is encrypted")
        try:
            # "" rather than None: OpenSSL would otherwise ask for a pass phrase on the terminal.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                cert, key, "" if password is None else password.reveal()
            )
        except (ssl.SSLError, ValueError) as exc:
            if encrypted and password_name is not None:
                raise self.fail(
                    password_name,
                    f"does not decrypt {key!r}, or that key is not {cert!r}'s ({_ssl_why(exc)})",
                ) from None
            raise self.fail(
                key_name, f"{key!r} is not the private key of {cert!r} ({_ssl_why(exc)})"
            ) from None
        return cert, key

    def listen_host(self, name: str, default: str | None = None) -> str:
        """An address of this machine a server can listen on (proven by binding a free port on it)."""
        value = self.text(name, default)
        try:
            infos = socket.getaddrinfo(value, 0, type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind(address)
        except OSError as exc:
            raise self.fail(
                name, f"{value!r} is no address this machine can listen on ({exc.strerror or exc})"
            ) from None
        return value

    def mqtt_url(self, name: str = "IOT_MQTT_URL") -> MqttEndpoint:
        """A broker URL (default from the declarations): host, port and whether it is TLS."""
        return parse_mqtt_url(self.text(name), name, self._error)

    def mqtt_filter(self, name: str, default: str | None = None) -> str:
        """An MQTT topic filter as a SUBSCRIBE accepts it: `#` only alone as the last level, `+` only as
        a whole level (MQTT 5.0, 4.7.1); a broker or paho refuses anything else, too late to say why."""
        value = self.text(name, default)
        if len(value.encode("utf-8")) > _MQTT_FILTER_MAX or "\x00" in value:
            raise self.fail(name, "not an MQTT topic filter (too long, or a NUL character)")
        levels = value.split("/")
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != len(levels) - 1):
                raise self.fail(name, f"{value!r}: '#' must be a whole level and the last one")
            if "+" in level and level != "+":
                raise self.fail(name, f"{value!r}: '+' must be a whole level")
        return value

    def bootstrap(self, name: str = "IOT_KAFKA_BOOTSTRAP") -> str:
        """Kafka's bootstrap list: host:port, comma separated, each port a number in 1..65535."""
        value = self.text(name)
        for item in value.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not _HOST.match(host):
                raise self.fail(name, f"{item.strip()!r} is not host:port")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise self.fail(name, f"{item.strip()!r}: port {port!r} is not a number in 1..65535")
        return ",".join(item.strip() for item in value.split(","))

    def mongo_uri(self, name: str = "IOT_MONGO_URI") -> str:
        """A MongoDB connection string, checked as far as it can be without connecting: pymongo's own
        parser for `mongodb://` (hosts, ports, options); scheme and host for `mongodb+srv://`, whose
        hosts are looked up in DNS when the client connects."""
        value = self.text(name)
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("mongodb", "mongodb+srv"):
            raise self.fail(name, "must start with mongodb:// or mongodb+srv://")
        if scheme == "mongodb+srv":
            host = rest.partition("/")[0].rpartition("@")[2]
            if not host or ":" in host or "," in host:
                raise self.fail(name, f"{_mask_uri(value)!r}: mongodb+srv:// takes one host name, no port")
            return value
        from pymongo import uri_parser  # the backend's client; only this check needs it here
        from pymongo.errors import PyMongoError

        try:
            parsed = uri_parser.parse_uri(value, warn=True)  # as MongoClient: unknown options warn
        except (ValueError, PyMongoError) as exc:
            raise self.fail(name, f"{_mask_uri(value)!r}: {str(exc).split('. Hint')[0]}") from None
        database = parsed.get("database") or ""
        if any(c in database for c in '/\\ "$\x00') or len(database) > 63:
            raise self.fail(name, f"{database!r} is not a MongoDB database name")
        return value

    def _bounds(self, name: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and high is not None and not low <= value <= high:
            raise self.fail(name, f"{value:g} is outside {low:g}..{high:g}")
        if low is not None and value < low:
            raise self.fail(name, f"{value:g} must be >= {low:g}")
        if high is not None and value > high:
            raise self.fail(name, f"{value:g} must be <= {high:g}")


def with_database(uri: str, database: str) -> str:
    """The MongoDB URI `uri` naming `database` instead of its own (options and credentials kept)."""
    scheme, _, rest = uri.partition("://")
    authority, _, path = rest.partition("/")
    _, query_sep, query = path.partition("?")
    return f"{scheme}://{authority}/{database}{query_sep}{query}"


def writable_dir(name: str, path: str | Path, error: type[ConfigError] = ConfigError) -> Path:
    """Create the directory `path` (the value of variable `name`) if needed and prove it writable by
    writing a file into it, so a service fails at start naming the variable, not later in a library."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise error(name, f"{str(folder)!r} is not a writable directory ({exc.strerror or exc})") from None
    return folder


def _same(a: str, b: str) -> bool:
    try:
        return a == b or float(a) == float(b)
    except ValueError:
        return False


def _mask_uri(uri: str) -> str:
    """The URI without its password, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", uri)


def _ssl_why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).strip() or type(exc).__name__

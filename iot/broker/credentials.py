"""The passwords of the two service accounts, and where the product finds them.

- the **operator** (`IOT_MQTT_OPERATOR_USERNAME` / `IOT_MQTT_OPERATOR_PASSWORD`): the broker's
  dynamic-security admin; `iot devices`, `iot boards`, the rig and the stack's probes use it;
- the **gateway** (`IOT_MQTT_USERNAME` / `IOT_MQTT_PASSWORD`, the variables `iot gateway` reads).

The environment wins. Otherwise they come from the native stack's file `<stack>/credentials.json`
(`IOT_STACK_DIR`, default `.stack/`), which `iot stack up` writes once with random passwords, mode
0600; a file others may read is refused, as ssh refuses a readable key. Passwords never reach a log:
`Credentials` leaves them out of its repr.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from iot.env import EnvReader, stack_dir
from iot.errors import ConfigError

__all__ = [
    "GATEWAY",
    "OPERATOR",
    "Credentials",
    "find",
    "new_password",
    "stack_file",
    "write_stack_file",
]

OPERATOR = "operator"
GATEWAY = "gateway"
_VARIABLES: Mapping[str, tuple[str, str]] = {
    OPERATOR: ("IOT_MQTT_OPERATOR_USERNAME", "IOT_MQTT_OPERATOR_PASSWORD"),
    GATEWAY: ("IOT_MQTT_USERNAME", "IOT_MQTT_PASSWORD"),
}
FILE_NAME = "credentials.json"


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # where they were found, for messages: a variable's or a file's name

    def as_env(self, account: str) -> dict[str, str]:
        """The variables that hand these credentials to a child process (`iot gateway`, …)."""
        user_var, password_var = _VARIABLES[account]
        return {user_var: self.username, password_var: self.password}


def new_password() -> str:
    """192 random bits, URL-safe (32 characters): nothing to guess, so the broker's cheap hash
    (PBKDF2-SHA512, 101 rounds, dynamic-security's default) costs an attacker nothing useful."""
    return secrets.token_urlsafe(24)


def stack_file(env: Mapping[str, str] | None = None) -> Path:
    return stack_dir(env) / FILE_NAME


def read_stack_file(path: Path) -> dict[str, Credentials]:
    """The accounts in a stack credentials file (empty when there is none)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), f"may be read by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    try:
        raw = json.loads(path.read_text())
        return {
            account: Credentials(str(entry["username"]), str(entry["password"]), str(path))
            for account, entry in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(str(path), f"is not a credentials file ({type(exc).__name__}: {exc})") from None


def write_stack_file(path: Path, accounts: Mapping[str, Credentials]) -> None:
    """Write the file whole, mode 0600 from its creation on (never readable by others, not even
    for a moment), and replace the old one atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(
        {name: {"username": c.username, "password": c.password} for name, c in accounts.items()}, indent=1
    )
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is only for a new file
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def find(account: str, env: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials of `account` (OPERATOR or GATEWAY): from the environment, else from the
    native stack's file, else None (a broker without authentication)."""
    env = os.environ if env is None else env
    user_var, password_var = _VARIABLES[account]
    reader = EnvReader(env)
    username = reader.optional(user_var)
    password = reader.optional(password_var)
    if password is not None and username is None:
        raise ConfigError(user_var, f"is required when {password_var} is set")
    if username is not None:
        return Credentials(username, password or "", f"{user_var}/{password_var}")
    return read_stack_file(stack_file(env)).get(account)

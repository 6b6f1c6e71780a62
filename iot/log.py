"""Structured logs: one line per event, `event key=value ...`, secrets never printed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from iot.env import LOG
from iot.errors import ConfigError

_SECRET_KEYS = ("password", "secret", "token", "sasl", "key")


def _fmt(value: Any) -> str:
    text = str(value)
    if not text.isprintable():
        # A line break or other control character in a value (a topic or payload a board chose) would
        # forge log lines of its own: shown escaped, as Python writes it in a string literal.
        text = text.encode("unicode_escape").decode("ascii")
        return '"' + text.replace('"', '\\"') + '"'
    if text == "" or any(c in text for c in ' ="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def kv(event: str, **fields: Any) -> str:
    """Render an event and its fields; values of secret-looking keys are masked."""
    parts = [event]
    for key, value in fields.items():
        if any(s in key.lower() for s in _SECRET_KEYS) and value not in (None, ""):
            value = "***"
        parts.append(f"{key}={_fmt(value)}")
    return " ".join(parts)


class EventLogger:
    """A thin wrapper so call sites read `log.info("kafka_unreachable", broker=..., action=...)`."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def debug(self, event: str, **fields: Any) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(kv(event, **fields))

    def info(self, event: str, **fields: Any) -> None:
        self._log.info(kv(event, **fields))

    def warning(self, event: str, **fields: Any) -> None:
        self._log.warning(kv(event, **fields))

    def error(self, event: str, **fields: Any) -> None:
        self._log.error(kv(event, **fields))

    def log(self, level: int, event: str, **fields: Any) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, kv(event, **fields))

    def enabled(self, level: int) -> bool:
        return self._log.isEnabledFor(level)


def get(name: str) -> EventLogger:
    return EventLogger(name)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup(level: str | None = None, env: Mapping[str, str] | None = None) -> None:
    """Configure the root logger once: timestamp, level, component, event line, to stderr. `level`
    (`iot --log-level`) wins over IOT_LOG_LEVEL; a bad one is a ConfigError naming where it came from."""
    if level is not None:
        chosen = _level("--log-level", level)
    else:
        chosen = LOG.reader(env).choice("IOT_LOG_LEVEL", LEVELS)
    logging.basicConfig(
        level=chosen, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def _level(field: str, value: str) -> str:
    if value.upper() not in LEVELS:
        raise ConfigError(field, f"{value!r} is not one of {', '.join(LEVELS)}")
    return value.upper()

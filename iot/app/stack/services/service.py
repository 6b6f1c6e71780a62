"""What the stack knows of each native service: how it is configured, started and proven healthy
(`Service`), and its further listeners (`Listener`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iot.app.stack.config import StackConfig


@dataclass(frozen=True)
class Listener:
    """A further port of a service with its own health check (the broker's TLS listener): reported as
    its own row by `iot stack status`, waited for by `up`."""

    name: str
    port: int
    probe: Callable[[StackConfig], str]  # the detail when healthy; raises ProbeFailed otherwise


@dataclass(frozen=True)
class Service:
    name: str
    ports: Callable[[StackConfig], list[int]]
    argv: Callable[[StackConfig, Path], list[str]]
    marker: str  # a string in the running command line that identifies this service
    prepare: Callable[[StackConfig, Path], None]
    probe: Callable[[StackConfig], None]
    start_timeout: float = 30.0
    listeners: Callable[[StackConfig], list[Listener]] = lambda _c: []
    # Why the running service no longer matches what `up` would start (None: it does); `up` then
    # restarts it. May renew files the service reads (certificates).
    outdated: Callable[[StackConfig, Path], str | None] = lambda _c, _f: None
    # Run by `up` once the service answers, before its further listeners are checked (Kafka: give
    # the SASL listener's user its password; Mosquitto: the roles and the gateway's account).
    # Idempotent; raises ProbeFailed when it cannot yet.
    ready: Callable[[StackConfig], None] = lambda _c: None

    def folder(self, cfg: StackConfig) -> Path:
        return cfg.state_dir / self.name


def read_or_none(path: Path) -> str | None:
    """A file's text, None when it cannot be read (not written yet)."""
    try:
        return path.read_text()
    except OSError:
        return None

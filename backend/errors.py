"""The backend's exceptions, one tree:

BackendError (an iot.errors.IotError: the CLI prints it as `Type: message`)
├── ConfigError   a setting is missing or invalid; the message names the variable
└── SinkError     MongoDB or Kafka refused a write the backend cannot go on without
"""

from __future__ import annotations

from iot import errors as _kernel
from iot.errors import IotError


class BackendError(IotError):
    """Base of the backend's own errors."""


class ConfigError(BackendError, _kernel.ConfigError):
    """An IOT_* setting (or a command option) is invalid; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        _kernel.ConfigError.__init__(self, field, problem)


class SinkError(BackendError):
    """A write to MongoDB or Kafka failed."""

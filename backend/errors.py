"""The backend's exceptions, one tree:

BackendError (an iot.errors.IotError: the CLI prints it as `Type: message`)
├── ConfigError   a setting is missing or invalid; the message names the variable
└── SinkError     MongoDB or Kafka refused a write the backend cannot go on without
"""

from __future__ import annotations

from iot.errors import IotError


class BackendError(IotError):
    """Base of the backend's own errors."""


class ConfigError(BackendError):
    """An IOT_* setting is invalid."""


class SinkError(BackendError):
    """A write to MongoDB or Kafka failed."""

"""Errors of the broker's account management.

IotError
└── BrokerError                the broker could not be reached or refused what was asked
    ├── BrokerAuthError        it refused this login (wrong or missing credentials)
    └── DynsecError            the dynamic-security plugin answered a command with an error
"""

from __future__ import annotations

from iot.errors import IotError

__all__ = ["BrokerAuthError", "BrokerError", "DynsecError"]


class BrokerError(IotError):
    pass


class BrokerAuthError(BrokerError):
    pass


class DynsecError(BrokerError):
    def __init__(self, command: str, error: str, detail: str = "") -> None:
        super().__init__(f"{command}: {error}{f' ({detail})' if detail else ''}")
        self.command = command
        self.error = error

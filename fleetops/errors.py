"""Errors of fleet operations (reported by `iot` as `Type: message`).

FleetError(IotError)
 ├── BundleError    a bundle or signing key cannot be built or read; says which file and why
 └── RolloutError   a config or update could not be delivered (no such board, broker refused)
"""

from __future__ import annotations

from iot.errors import IotError

__all__ = ["BundleError", "FleetError", "RolloutError"]


class FleetError(IotError):
    pass


class BundleError(FleetError):
    pass


class RolloutError(FleetError):
    pass

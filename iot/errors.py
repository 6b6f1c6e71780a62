"""The product's one exception root, in the kernel so every package can derive from it.

IotError                      anything the `iot` command reports as `Type: message` (exit 1)
├── ConfigError               a setting (environment variable, config file field) is wrong; names it
├── gateway.errors.GatewayError
├── backend.errors.BackendError
├── hil.errors.HilError
├── fleetops.errors.FleetError  remote configuration and over-the-air updates (BundleError, RolloutError)
├── iot.topics.TopicError     a contract topic could not be created or checked
├── iot.broker.errors.BrokerError   the broker refused a login or an account change (BrokerAuthError,
│                                   DynsecError)
├── iot.devices.registry.RegistryError   the device registry (MongoDB) did not answer
└── iot.app.stack: StackError, InstallError, ProbeFailed

Each package keeps its own subtree in its `errors` module; only the root and ConfigError live here.
"""

from __future__ import annotations

__all__ = ["ConfigError", "IotError"]


class IotError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(IotError, ValueError):
    """A configuration value is missing or invalid; `field` names the variable or key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

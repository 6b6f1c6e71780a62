"""The product's one exception root, in the kernel so every package can derive from it.

Every error the product raises derives from IotError (tests/test_errors.py walks the packages and
checks it, and that this drawing names every one):

IotError                            anything the `iot` command reports as `Type: message` (exit 1)
├── ConfigError                     a setting (environment variable, config file field) is wrong; names it
│   ├── gateway.errors.SettingsError
│   ├── backend.errors.ConfigError
│   ├── hil.errors.RigConfigError
│   └── iot.kafka.KafkaAuthError    the brokers refused this client's credentials or TLS (names the setting)
├── iot.pins.PinError               an installed library is not the version our workarounds were written for
├── iot.contract.InvalidReading     a message is not a valid payload v1 reading; `reason` is its DLQ code
├── iot.topics.TopicError           a contract topic could not be created or checked
│   ├── KafkaUnavailable            no broker answered in time
│   ├── TopicCreateFailed           the cluster refused to create a topic
│   ├── TopicMismatch               a topic exists with settings its users cannot work with
│   └── TopicNotVisible             a topic is not in the metadata with every partition led in time
├── iot.reach.Unreachable           a service a command needs does not answer; says what to start
├── iot.broker.errors.BrokerError   the broker refused a login or an account change
│   ├── BrokerAuthError
│   └── DynsecError
├── iot.devices.registry.RegistryError   the device registry (MongoDB) did not answer
├── iot.readings_migration.MigrationError   the readings migration met data it cannot rewrite losslessly
├── hil.virtual.env.EnvError        a scripted environment (virtual boards) is not valid; names the metric
├── iot.harness.errors.HarnessError the harness (the demo's, rig's, benchmarks' and tests' processes)
│   └── ChildFailed                 a child process exited or did not become ready; carries its log tail
├── iot.app.stack                   the native stack
│   ├── manager.StackError          the stack could not be brought to the asked state; names the service
│   ├── install.InstallError        an install step failed; names the step and what to do
│   ├── probes.ProbeFailed          a service answered wrongly or not in time
│   └── tls.CertificateError        openssl failed to make or read a certificate
├── gateway.errors.GatewayError
│   ├── SettingsError               (also a ConfigError)
│   ├── MqttConnectError
│   └── KafkaFatalError
├── backend.errors.BackendError
│   ├── ConfigError                 (also the kernel's ConfigError)
│   ├── SinkError
│   ├── backend.records.RejectedRecord   a record that is not a reading: to the DLQ, never a window
│   ├── backend.stored.CorruptWindow     a stored window that cannot be amended (dead-lettered)
│   └── backend.engine.ItemFailed        the engine failed on one item: rolled back, set aside
├── fleetops.errors.FleetError      remote configuration and over-the-air updates
│   ├── BundleError                 an update bundle is not valid (format, signature, files)
│   └── RolloutError                a rollout could not go on (a canary failed, no board answered)
└── hil.errors.HilError
    ├── BoardError
    ├── FlashError
    ├── RigStackError
    ├── RigConfigError              (also a ConfigError)
    ├── hil.rig.operator.NoAnswer   the operator closed the terminal instead of confirming (an EOFError too)
    └── hil.rig.steps.StepFailed    a rig step's expectation did not hold
        └── StepFailedWith          … with the measurements that failed

Each package keeps its own subtree in its `errors` module (or beside the code that raises it, as
drawn); only the root and ConfigError live here. Code that runs on a board (firmware/, and
hil/virtual/ under MicroPython) cannot import this module and keeps its own exceptions.
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

"""The rig's exception tree (all reported by `iot` as `Type: message`, no traceback).

HilError
 ├── BoardError     a board (virtual or real) did not start, stopped unexpectedly or misbehaved
 ├── FlashError     copying firmware to a real board failed; carries the command and its output
 ├── RigStackError  the rig's broker, gateway or backend did not come up, or Kafka cannot be read
 └── RigConfigError a rig or board config value is wrong; names the field (also a ConfigError)
hil.rig.steps.StepFailed (a HilError) and hil.rig.operator.NoAnswer (a HilError and an EOFError) live
beside the code that raises them.
"""

from __future__ import annotations

from iot.errors import ConfigError, IotError


class HilError(IotError):
    pass


class BoardError(HilError):
    pass


class FlashError(HilError):
    def __init__(self, message: str, command: list[str] | None = None, output: str = "") -> None:
        detail = message
        if command:
            detail += f" (command: {' '.join(command)})"
        if output:
            detail += f"\n{output.strip()[-2000:]}"
        super().__init__(detail)
        self.command = command or []
        self.output = output


class RigStackError(HilError):
    pass


class RigConfigError(HilError, ConfigError):
    def __init__(self, field: str, problem: str) -> None:
        ConfigError.__init__(self, field, problem)
        self.args = (f"field {field!r}: {problem}",)

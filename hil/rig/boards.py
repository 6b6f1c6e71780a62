"""One board of the rig, virtual or real: its resource (the spec), its fault proxy, and its drivers.

Both kinds are flashed over their serial port and reach the broker through their own `MqttProxy`
(the network-fault injector). What differs is the chip around the firmware, and that is chosen once,
here, as drivers (hil/rig/drivers.py): a step asks `board.power.off()` or `board.sensors.inject(...)`
and never which kind of board it has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hil.errors import BoardError
from hil.netfault import MqttProxy
from hil.rig.drivers import (
    BoardSensors,
    Console,
    Flash,
    ManualPower,
    NoConsole,
    Port,
    Power,
    RelayPower,
    Reset,
    Sensors,
    SerialFlash,
    SerialPort,
    SerialReset,
    VirtualConsole,
    VirtualPort,
    VirtualPower,
    VirtualReset,
    VirtualSensors,
)
from hil.rig.operator import Operator
from hil.rig.spec import BoardSpec
from hil.vboard_process import VirtualBoard


class RigBoard:
    serial: Port
    power: Power
    reset: Reset
    console: Console
    flash: Flash
    sensors: Sensors

    def __init__(
        self,
        spec: BoardSpec,
        workdir: Path,
        broker: tuple[str, int],
        listen: str,
        advertise: str,
        operator: Operator | None = None,
        login: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.login = login or {}  # mqtt_user and mqtt_password the rig provisioned for it
        self.id = spec.id
        self.device = spec.device
        self.place = spec.place
        self.proxy = MqttProxy(broker[0], broker[1], listen).start()
        self.broker_url = f"mqtt://{advertise}:{self.proxy.port}"
        self.workdir = workdir
        self.config_path = workdir / "config" / f"{spec.id}.json"
        self.chip: VirtualBoard | None = None  # a virtual board's chip (power cuts inside boot.py)
        if spec.virtual:
            # The chip around the firmware (hil/serial_board.py): made now, powered by power_up.
            chip = self.chip = VirtualBoard(
                workdir / "boards",
                self.config(),
                {"env": spec.env, "seed": 1},
                serial=True,
                profile=spec.profile,
            )
            self.serial = VirtualPort(chip)
            self.power = VirtualPower(chip)
            self.reset = VirtualReset(chip)
            self.console = VirtualConsole(chip)
            self.flash = SerialFlash(self.id, lambda: self.port, mpy_arch="")
            self.sensors = VirtualSensors(chip, spec.env)
        else:
            self.serial = SerialPort(self.id, spec.port)
            if spec.power.manual:
                self.power = ManualPower(self.id, spec.port, operator)
            else:
                self.power = RelayPower(self.id, spec.power.on, spec.power.off)
            self.reset = SerialReset(self.id, lambda: self.port)
            self.console = NoConsole()
            self.flash = SerialFlash(self.id, lambda: self.port, mpy_arch="xtensawin")
            self.sensors = BoardSensors(self.id)

    @property
    def port(self) -> str:
        return self.serial.path

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"device": self.device, "place": self.place, "broker": self.broker_url}
        cfg.update(self.spec.config)
        cfg.update(self.login)
        return cfg

    def write_config(self) -> Path:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        return self.config_path

    def power_up(self) -> None:
        """The board on its port: a virtual one made and powered, a real one checked."""
        self.serial.attach()

    def shutdown(self) -> None:
        self.serial.detach()
        self.proxy.stop()

    def cut_power_in_boot(self, after_ops: int) -> None:
        """A virtual board's power goes after boot.py's `after_ops`-th flash operation of its next
        update swap (or rollback); a real board has no such switch."""
        if self.chip is None:
            raise BoardError(f"{self.id}: a power cut at a flash operation needs a virtual board")
        self.chip.cut_power_in_boot(after_ops)

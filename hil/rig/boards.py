"""Drivers: one board of the rig, virtual or real, behind its serial port and its fault proxy.

Both kinds are flashed over their serial port with `hil.flash` and reach the broker through their own
`MqttProxy` (the network-fault injector). What differs is the chip around the firmware: a virtual
board's power, reset, sensors and environment are switches of hil/serial_board.py; a real board's
power is a relay command (or the operator) and its reset is `mpremote reset`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from hil import paths
from hil.errors import BoardError
from hil.netfault import MqttProxy
from hil.rig.operator import NoAnswer, Operator
from hil.rig.spec import BoardSpec
from hil.vboard_process import VirtualBoard
from hil.virtual import env as envmod


class RigBoard:
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
        self.operator = operator  # who switches a `power: manual` board; None when unattended
        self.id = spec.id
        self.device = spec.device
        self.place = spec.place
        self.proxy = MqttProxy(broker[0], broker[1], listen).start()
        self.broker_url = f"mqtt://{advertise}:{self.proxy.port}"
        self.workdir = workdir
        self.config_path = workdir / "config" / f"{spec.id}.json"
        self.vboard: VirtualBoard | None = None
        # The scripted environment over time: (from epoch s, spec); the first holds from the start.
        self.env_timeline: list[tuple[float, dict[str, Any]]] = [(0.0, spec.env)] if spec.virtual else []

    # --- resources ------------------------------------------------------------------------------
    @property
    def port(self) -> str:
        return self.vboard.port if self.vboard is not None else self.spec.port

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"device": self.device, "place": self.place, "broker": self.broker_url}
        cfg.update(self.spec.config)
        cfg.update(self.login)
        return cfg

    def write_config(self) -> Path:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        return self.config_path

    # --- lifecycle ------------------------------------------------------------------------------
    def power_up(self) -> None:
        """A virtual board is made (factory firmware, the rig's config) and powered; a real one is
        assumed powered and on its port."""
        if self.spec.virtual:
            self.vboard = VirtualBoard(
                self.workdir / "boards",
                self.config(),
                {"env": self.spec.env, "seed": 1},
                serial=True,
                profile=self.spec.profile,
            )
            self.vboard.write_files()
            self.vboard.start()
        elif not Path(self.spec.port).exists() and not self.spec.port.startswith("id:"):
            raise BoardError(
                f"{self.id}: serial port {self.spec.port} does not exist; is the board plugged in?"
            )

    def shutdown(self) -> None:
        if self.vboard is not None:
            self.vboard.stop()
        self.proxy.stop()

    # --- stimuli and faults ------------------------------------------------------------------------
    def power(self, on: bool) -> None:
        if self.vboard is not None:
            self.vboard.power_on() if on else self.vboard.power_off()
            return
        command = self.spec.power.on if on else self.spec.power.off
        if not command and self.spec.power.manual and self.operator is not None:
            action = "plug it back in (power on)" if on else "unplug its power (USB cable or supply)"
            try:
                self.operator(f"board {self.id} on {self.spec.port}: {action}")
            except NoAnswer as exc:
                raise BoardError(f"{self.id}: {exc}") from exc
            return
        if not command:
            raise BoardError(
                f"{self.id}: no power {'on' if on else 'off'} command in the rig file "
                "(boards[].power.on_command/off_command, e.g. a USB relay); "
                "manual power needs an operator: run `iot hil run` at a terminal"
            )
        run(["sh", "-c", command], f"power {'on' if on else 'off'} {self.id}")

    def reset(self) -> None:
        if self.vboard is not None:
            self.vboard.hard_reset("rig reset")
        else:
            run([paths.venv_tool("mpremote"), "connect", self.port, "reset"], f"reset {self.id}")

    def sensor_fault(self, sensor: str, kind: str | None) -> None:
        if self.vboard is None:
            raise BoardError(f"{self.id}: sensor faults are injected on virtual boards only")
        self.vboard.set_fault(sensor, kind)

    def set_environment(self, at: float, values: dict[str, float]) -> None:
        if self.vboard is None:
            raise BoardError(f"{self.id}: the environment is scripted on virtual boards only")
        spec = dict(self.env_timeline[-1][1])
        for metric, value in values.items():
            spec[metric] = {"kind": "constant", "value": value}
        spec = envmod.validate(spec)
        (self.vboard.control / "env.json").write_text(json.dumps(spec))
        self.env_timeline.append((at, spec))

    def expected(self, ts_s: float) -> dict[str, float] | None:
        """What the sensors measured at epoch ts (virtual boards), before noise."""
        if not self.env_timeline:
            return None
        spec = self.env_timeline[0][1]
        for since, s in self.env_timeline:
            if ts_s >= since:
                spec = s
        return envmod.values_at(spec, ts_s)

    def near_env_change(self, ts_s: float, margin_s: float = 1.5) -> bool:
        return any(abs(ts_s - since) < margin_s for since, _ in self.env_timeline[1:])

    def console(self) -> str:
        return self.vboard.console() if self.vboard is not None else ""

    def read_version(self) -> str:
        """The firmware version in the board's flash, read over the serial console (then reset)."""
        out = run(
            [
                paths.venv_tool("mpremote"),
                "connect",
                self.port,
                "exec",
                "import config; print('FW=' + config.FW_VERSION)",
                "+",
                "reset",
            ],
            f"reading the firmware version of {self.id}",
        )
        for line in out.splitlines():
            if line.startswith("FW="):
                return line[3:].strip()
        raise BoardError(f"{self.id}: no firmware version in the answer: {out.strip()[-300:]}")


def run(command: list[str], what: str, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BoardError(f"{what}: no answer within {timeout:.0f}s (command: {' '.join(command)})") from exc
    if proc.returncode != 0:
        raise BoardError(
            f"{what} failed with exit code {proc.returncode} (command: {' '.join(command)}): "
            f"{(proc.stdout + proc.stderr).strip()[-500:]}"
        )
    return proc.stdout

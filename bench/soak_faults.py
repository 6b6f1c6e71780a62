"""The fault schedule of bench/soak.py: each fault once, one after another, evenly spread over the
load, each component brought back after `--pause` seconds.

A hostile board first (bench/soak_hostile.py: bad retained health, poison readings, a burst of
garbage, all on its own topics; its retained messages stay for the faults after it), then SIGKILL of
one gateway, the backend, Kafka, Mosquitto, the MongoDB-wire server (FerretDB), and a network outage
seen by every board (the fleets drop their connections and stay offline)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from soak_common import HOST, log, poll_until
from soak_hostile import HostileBoard
from soak_procs import FleetProc, Service

from iot.broker import credentials
from iot.harness.stack import PrivateStack

FAULTS = ("hostile", "gateway", "backend", "kafka", "mosquitto", "ferretdb", "boards")
STACK_SERVICES = ("mosquitto", "kafka", "ferretdb")


@dataclass
class Fault:
    name: str
    target: str
    killed_at: float = 0.0
    back_at: float = 0.0
    ok: bool = True

    def summary(self) -> dict[str, Any]:
        return {
            "fault": self.name,
            "target": self.target,
            "killed_at": round(self.killed_at, 3),
            "back_at": round(self.back_at, 3),
            "down_s": round(self.back_at - self.killed_at, 1),
            "ok": self.ok,
        }


@dataclass
class FaultInjector:
    """The faults of the soak, one after another, on its services, stack and fleets; `lock` is the
    soak's, held while a service is killed or launched (the sampler reads no half-replaced process)."""

    args: Any
    services: dict[str, Service]
    stack: PrivateStack
    fleets: Sequence[FleetProc]
    lock: threading.Lock
    fleet_sum: Callable[[str], int]
    faults: list[Fault] = field(default_factory=list)
    hostile: HostileBoard | None = None

    def run(self, load_started: float, on_warm: Callable[[], None]) -> None:
        """Wait out the warm-up, call `on_warm`, inject every fault on schedule, then let the load run
        to its end (`--minutes`, or `--tail` after the last fault when that is later)."""
        a = self.args
        names = [f for f in FAULTS if f in a.faults]
        load_s = a.minutes * 60
        spacing = max(a.pause + 5.0, (load_s - a.warmup - a.tail) / max(1, len(names)))
        start = load_started + a.warmup
        _sleep_until(start)
        on_warm()
        for i, name in enumerate(names):
            _sleep_until(start + i * spacing)
            fault = self.inject(name)
            self.faults.append(fault)
            log(
                "fault_done",
                fault=name,
                target=fault.target,
                down_s=round(fault.back_at - fault.killed_at, 1),
                ok=fault.ok,
            )
        end = max(load_started + load_s, (self.faults[-1].back_at + a.tail) if self.faults else 0)
        _sleep_until(end)

    def inject(self, name: str) -> Fault:
        if name in ("gateway", "backend"):
            fault = self._kill_service(name)
        elif name in STACK_SERVICES:
            fault = self._kill_stack_service(name)
        elif name == "boards":
            fault = self._network_outage()
        elif name == "hostile":
            fault = self._hostile_board()
        else:
            raise ValueError(name)
        fault.back_at = time.time()
        return fault

    def _kill_service(self, name: str) -> Fault:
        svc = self.services["gateway0" if name == "gateway" else "backend"]
        fault = Fault(name, svc.name, killed_at=time.time())
        with self.lock:
            svc.kill9()
        log("fault", kill=svc.name, signal="SIGKILL")
        time.sleep(self.args.pause)  # the outage itself
        with self.lock:
            fault.ok = svc.launch(180 if name == "backend" else 120)
        return fault

    def _kill_stack_service(self, name: str) -> Fault:
        fault = Fault(name, name, killed_at=time.time())
        pid = self.stack.kill(name)
        log("fault", kill=name, pid=pid, signal="SIGKILL")
        time.sleep(self.args.pause)
        try:
            self.stack.up([name])
        except Exception as exc:  # report it; the accounting shows the consequence
            log("restart_failed", service=name, error=repr(exc)[:300])
            fault.ok = False
        return fault

    def _network_outage(self) -> Fault:
        pause = self.args.pause
        fault = Fault("boards", "all boards", killed_at=time.time())
        for f in self.fleets:
            f.command(f"outage {pause}")
        log("fault", outage="boards", seconds=pause)
        total = sum(len(f.boards) for f in self.fleets)
        poll_until(lambda: self.fleet_sum("connected") == 0, 10, "boards offline")
        fault.ok = poll_until(lambda: self.fleet_sum("connected") == total, pause + 120, "boards back online")
        return fault

    def _hostile_board(self) -> Fault:
        """The hostile board's attack, then `--pause` seconds; ok when every gateway is still up,
        connected and receiving, and none caught an exception in its MQTT callbacks."""
        fault = Fault("hostile", "gateways", killed_at=time.time())
        gateways = [s for name, s in self.services.items() if name.startswith("gateway")]
        received = {s.name: self._gateway_metric(s, "iot_gateway_received_total") or 0.0 for s in gateways}
        operator = credentials.read_stack_file(self.stack.folder / credentials.FILE_NAME).get(
            credentials.OPERATOR
        )
        login = (operator.username, operator.password) if operator else None
        board = self.hostile = HostileBoard(
            HOST, self.stack.mqtt_port, self.args.hostile_burst, login=login
        )
        log("fault", hostile=board.burst)
        try:
            board.attack()
        finally:
            board.close()
        time.sleep(self.args.pause)  # the fleet keeps publishing beside what the gateways now hold
        for svc in gateways:
            up = self._gateway_metric(svc, "iot_gateway_mqtt_connected") == 1.0
            errors = self._gateway_metric(svc, "iot_gateway_callback_errors_total") or 0.0
            now = self._gateway_metric(svc, "iot_gateway_received_total") or 0.0
            alive = svc.alive()
            log("hostile_check", gateway=svc.name, alive=alive, connected=up, callback_errors=errors,
                received=now - received[svc.name])  # fmt: skip
            fault.ok = fault.ok and alive and up and not errors and now > received[svc.name]
        return fault

    def _gateway_metric(self, svc: Service, name: str) -> float | None:
        return svc.metric(name)


def _sleep_until(at: float) -> None:
    # The schedule, not synchronisation: faults and the load's end are points in time.
    with contextlib.suppress(ValueError):
        time.sleep(max(0.0, at - time.time()))

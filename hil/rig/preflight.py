"""What `iot hil run` would trip over, found before it starts: the services it needs, and the firmware
version a run would flash and verify. `iot hil check` prints these; `iot hil run` stops on them in one
line, before any board is powered.

(Board configs are checked by `spec.load` with the firmware's own checker; each board's version on
its port is read by `iot hil check`, see `version_problem`.)
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hil.probe import broker_address
from hil.rig.spec import Rig
from iot.reach import START_HINT, Unreachable, check_kafka, check_mongo, check_tcp


@dataclass(frozen=True)
class Service:
    name: str
    where: str
    problem: str = ""  # empty: it answered


def services(rig: Rig, timeout: float = 3.0) -> list[Service]:
    """Each shared service the run needs, and whether it answered."""
    spec = rig.stack
    checks: list[tuple[str, str, Callable[[], None]]] = []
    if spec.broker != "private":
        host, port = broker_address(spec.broker)
        address = f"{host}:{port}"
        checks.append(("MQTT broker", address, lambda: check_tcp("MQTT broker", host, port, timeout)))
    if not spec.own_kafka:
        checks.append(("Kafka", spec.kafka.bootstrap, lambda: check_kafka(spec.kafka, timeout)))
    where = spec.mongo.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    checks.append(("MongoDB", where, lambda: check_mongo(spec.mongo, timeout)))

    def answer(name: str, address: str, check: Callable[[], None]) -> Service:
        try:
            check()
            return Service(name, address)
        except Unreachable as exc:
            return Service(name, address, str(exc))

    # At once: a service that is down costs its whole timeout, and one after another they added up.
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        return list(pool.map(lambda c: answer(*c), checks))


def services_line(down: list[Service]) -> str:
    """One line for every service that did not answer."""
    if len(down) == 1:
        return down[0].problem
    names = ", ".join(f"{s.name} at {s.where}" for s in down)
    return f"{names} do not answer: {START_HINT}"


def firmware_version(directory: Path) -> str:
    """FW_VERSION of the firmware a flash step installs (its config.py), without importing it."""
    for line in (directory / "config.py").read_text().splitlines():
        if line.startswith("FW_VERSION"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return ""


def _first(rig: Rig, board: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of these steps a board meets in the run, with its key path."""
    for scenario in rig.scenarios:
        if scenario.boards and board not in scenario.boards:
            continue
        for step in scenario.steps:
            if step.name in names:
                return step.name, step.where
    return None


def firmware_problem(rig: Rig) -> str:
    """A flash step would install a version other than the one `verify_version` expects."""
    want = rig.firmware.version
    have = firmware_version(rig.firmware.dir)
    flashed = [b.id for b in rig.boards if (_first(rig, b.id, ("flash",)) or ("", ""))[0] == "flash"]
    if not want or not flashed or have == want:
        return ""
    return (
        f"firmware.version is {want}, but firmware.dir ({rig.firmware.dir}) holds {have}: a flash step "
        f"would install {have} and verify_version fail; set firmware.version: {have} or point firmware.dir "
        f"at the {want} build"
    )


def version_problem(rig: Rig, board: str, running: str) -> str:
    """A board runs another version than the rig expects and meets verify_version before any flash."""
    want = rig.firmware.version
    if not want or running == want:
        return ""
    first = _first(rig, board, ("flash", "verify_version"))
    if first is None or first[0] == "flash":
        return ""
    return (
        f"runs firmware {running}, the rig expects {want} (firmware.version) at {first[1]}, before any flash"
    )

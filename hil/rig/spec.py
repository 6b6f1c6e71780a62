"""The rig file (YAML) as frozen resources: stack endpoints, firmware, boards, scenarios of steps.

Data only (labgrid's resources): nothing here touches hardware. Every error is a RigConfigError that
names the key by its path in the file, e.g. `scenarios[1].steps[0].cut_network.seconds`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hil import paths
from hil.errors import RigConfigError
from hil.virtual import env as envmod
from hil.virtual import vprofile
from iot import contract
from iot import kafka as kafka_conn
from iot.env import CONTRACT, LOG, EnvReader, Variables
from iot.errors import ConfigError
from iot.kafka import KafkaConnection

T = TypeVar("T")
# What a rig run reads from the environment (`iot hil run --help`): where Kafka and MongoDB are when
# the rig file does not say, and Kafka's security, as the gateway and the backend read them.
VARIABLES = Variables(kafka_conn.VARIABLES, CONTRACT.pick("IOT_MONGO_URI"), LOG)

# Step name -> {argument: (type, default)}; a bare number as the argument sets the first one.
STEPS: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "flash": {"wait_s": ((int, float), 90)},
    "verify_version": {"timeout_s": ((int, float), 30)},
    "set_environment": {
        "temperature": ((int, float), None),
        "humidity": ((int, float), None),
        "pressure": ((int, float), None),
        "luminosity": ((int, float), None),
    },
    "cut_network": {"seconds": ((int, float), 10)},  # 0: until restore_network
    "restore_network": {},
    "power_cut": {"seconds": ((int, float), 3), "wait_online": (bool, True)},
    "reset": {"online_s": ((int, float), 30)},
    "sensor_fault": {"sensor": (str, "bme280"), "kind": (str, "nack"), "seconds": ((int, float), 5)},
    "broker_restart": {"down_s": ((int, float), 3)},
    "wait": {"seconds": ((int, float), 5)},
    "expect": {
        "delivered": (bool, True),
        "readings": (int, 1),  # at least this many readings published in the scenario, waited for
        "windows": (bool, True),
        "latency_s": ((int, float), 10),
        "timeout_s": ((int, float), 60),
    },
    # Fleet operations (hil/rig/fleet_steps.py), as the operator's `iot config set` / `iot ota push` /
    # `iot devices remove` do them. `error`: text the outcome's reason must contain.
    "config_set": {
        "set": (dict, None),
        "unset": (list, None),
        "trial_s": (int, 10),
        "expect": (str, "applied"),
        "error": (str, ""),
        "timeout_s": ((int, float), 90),
    },
    "ota_push": {
        "build": (str, "good"),  # good | raises_at_import | other_key (signed by a key boards do not trust)
        "version": (str, ""),  # "": one patch above what the board runs
        "cut": (str, "none"),  # none | transfer (power off a third in) | swap (virtual: inside boot.py)
        "expect": (str, "updated"),
        "error": (str, ""),
        "trial_s": (int, 60),
        "timeout_s": ((int, float), 240),
    },
    "revoke": {"seconds": ((int, float), 10), "online_s": ((int, float), 60)},
}
# Values a step's text argument may take.
CHOICES = {
    ("ota_push", "build"): ("good", "raises_at_import", "other_key"),
    ("ota_push", "cut"): ("none", "transfer", "swap"),
    ("ota_push", "expect"): ("updated", "rolled_back", "refused"),
    ("config_set", "expect"): ("applied", "refused"),
}
VIRTUAL_ONLY = {"set_environment", "sensor_fault"}
SENSORS = ("bme280", "bh1750")
FAULT_KINDS = ("nack", "wrong_id", "bad_crc", "stuck", "hang", "stuck_sda")
# Sensor noise + rounding of a virtual board (hil/README.md), the default window tolerance.
VIRTUAL_TOLERANCE = {"temperature": 0.05, "humidity": 0.1, "pressure": 0.1, "luminosity": 1.5}


@dataclass(frozen=True)
class Step:
    name: str
    args: dict[str, Any]
    where: str  # the key path, for messages

    def arg(self, key: str) -> Any:
        return self.args[key]


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    boards: tuple[str, ...] = ()  # empty: every board


@dataclass(frozen=True)
class Power:
    off: str = ""  # shell commands for a USB relay; empty with manual=True: ask the operator
    on: str = ""
    manual: bool = False


@dataclass(frozen=True)
class BoardSpec:
    id: str
    kind: str  # "virtual" or "esp32"
    place: str
    device: str
    port: str = ""
    env: dict[str, Any] = field(default_factory=dict)
    power: Power = Power()
    tolerance: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    profile: str = vprofile.DEFAULT  # the MicroPython version a virtual board runs

    @property
    def virtual(self) -> bool:
        return self.kind == "virtual"


@dataclass(frozen=True)
class StackSpec:
    broker: str  # "private" or an mqtt:// URL
    # stack.kafka (the bootstrap list) or IOT_KAFKA_BOOTSTRAP, with the IOT_KAFKA_* security settings
    kafka: KafkaConnection
    mongo: str
    services: str  # "start" or "running"
    # services: start runs a Kafka of the run's own (its bootstrap is known once it runs); `kafka`
    # is then unused. services: running uses `kafka`, the product's.
    own_kafka: bool
    proxy_host: str
    advertise_host: str
    tumbling_s: int
    grace_s: int
    mqtt_user: str = ""  # the rig's own MQTT client (probe) on a broker with ACLs, e.g. `gateway`
    mqtt_password: str = ""  # read from the environment variable named by stack.mqtt_password_env
    # With services: start, the run's database (hil_<run>) is dropped at the end unless kept; the
    # report already holds what the run measured.
    keep_database: bool = False


@dataclass(frozen=True)
class FirmwareSpec:
    dir: Path
    version: str
    mpy: bool


@dataclass(frozen=True)
class Rig:
    name: str
    path: Path
    stack: StackSpec
    firmware: FirmwareSpec
    boards: tuple[BoardSpec, ...]
    scenarios: tuple[Scenario, ...]
    run_id: str


_TOP = {"rig", "stack", "firmware", "board_config", "boards", "scenarios", "device_prefix"}


def _mapping(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RigConfigError(where, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise RigConfigError(
                f"{where}.{key}" if where else str(key), f"unknown key; known: {', '.join(sorted(allowed))}"
            )
    return value


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and kind in ((int, float), int):
        raise RigConfigError(where, f"must be a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RigConfigError(where, f"must be {names}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise RigConfigError(where, f"must not be negative, got {value!r}")
    return value


def parse_step(raw: Any, where: str) -> Step:
    """One step as a rig file writes it (`"flash"`, `{"wait": 5}`), checked, defaults filled in."""
    return _step(raw, where)


def _step(raw: Any, where: str) -> Step:
    args: Any
    if isinstance(raw, str):
        name, args = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, args = next(iter(raw.items()))
    else:
        raise RigConfigError(where, "a step is a name or a mapping of one name to its arguments")
    if name not in STEPS:
        raise RigConfigError(f"{where}.{name}", f"unknown step; known: {', '.join(STEPS)}")
    schema = STEPS[name]
    if args is not None and not isinstance(args, dict) and schema:
        args = {next(iter(schema)): args}  # `wait: 10` is `wait: {seconds: 10}`
    args = _mapping(args, f"{where}.{name}", set(schema))
    out: dict[str, Any] = {}
    for key, (kind, default) in schema.items():
        out[key] = _typed(args[key], kind, f"{where}.{name}.{key}") if key in args else default
    if name == "sensor_fault":
        if out["sensor"] not in SENSORS:
            raise RigConfigError(f"{where}.{name}.sensor", f"one of {', '.join(SENSORS)}")
        if out["kind"] not in FAULT_KINDS:
            raise RigConfigError(f"{where}.{name}.kind", f"one of {', '.join(FAULT_KINDS)}")
    for (step_name, key), choices in CHOICES.items():
        if name == step_name and out[key] not in choices:
            raise RigConfigError(f"{where}.{name}.{key}", f"one of {', '.join(choices)}, got {out[key]!r}")
    if name == "config_set" and not (out["set"] or out["unset"]):
        raise RigConfigError(f"{where}.{name}", "give set: {field: value} or unset: [field]")
    if name == "set_environment" and all(v is None for v in out.values()):
        raise RigConfigError(f"{where}.{name}", "give at least one of " + ", ".join(schema))
    return Step(name, out, f"{where}.{name}")


def _env(raw: Any, place: str, where: str) -> dict[str, Any]:
    if raw is None or raw == "constant":
        return envmod.constant_spec(place)
    if raw == "day":
        return envmod.day_spec(place)
    if isinstance(raw, dict):
        try:
            return envmod.validate(raw)
        except envmod.EnvError as exc:
            raise RigConfigError(where, str(exc)) from exc
    raise RigConfigError(where, "constant, day, or a mapping of metric -> profile (hil/virtual/env.py)")


_BOARD_KEYS = {
    "id", "kind", "count", "place", "device", "port", "env", "power", "tolerance", "config", "profile",
}


def _boards(raw: Any, prefix: str, board_config: dict[str, Any]) -> list[BoardSpec]:
    if not isinstance(raw, list) or not raw:
        raise RigConfigError("boards", "must be a non-empty list")
    boards: list[BoardSpec] = []
    for i, item in enumerate(raw):
        where = f"boards[{i}]"
        b = _mapping(item, where, _BOARD_KEYS)
        if "id" not in b:
            raise RigConfigError(f"{where}.id", "is required")
        bid = _typed(b["id"], str, f"{where}.id")
        if not contract.is_id(bid):
            raise RigConfigError(f"{where}.id", f"{bid!r} must be of A-Z a-z 0-9 _ -")
        kind = b.get("kind", "virtual")
        if kind not in ("virtual", "esp32"):
            raise RigConfigError(f"{where}.kind", f"virtual or esp32, got {kind!r}")
        place = _typed(b.get("place", "kitchen"), str, f"{where}.place")
        count = _typed(b.get("count", 1), int, f"{where}.count")
        config = _mapping(b.get("config"), f"{where}.config", set(_firmware_defaults()))
        power_raw = b.get("power", "manual" if kind == "esp32" else None)
        if power_raw == "manual":
            power = Power(manual=True)
        else:
            # Not `off:`/`on:` keys: YAML 1.1 reads those as booleans.
            pw = _mapping(power_raw, f"{where}.power", {"off_command", "on_command"})
            power = Power(str(pw.get("off_command", "")), str(pw.get("on_command", "")))
        tol = _mapping(b.get("tolerance"), f"{where}.tolerance", set(envmod.METRICS))
        tolerance = {m: float(_typed(v, (int, float), f"{where}.tolerance.{m}")) for m, v in tol.items()}
        profile = str(b.get("profile", vprofile.DEFAULT))
        if profile not in vprofile.PROFILES:
            raise RigConfigError(f"{where}.profile", f"{profile!r}: one of {', '.join(vprofile.PROFILES)}")
        if kind == "esp32":
            if "profile" in b:
                raise RigConfigError(f"{where}.profile", "a real board runs what was flashed on it")
            if count != 1:
                raise RigConfigError(f"{where}.count", "a real board is one board")
            for key in ("port", "device"):
                if key not in b:
                    raise RigConfigError(f"{where}.{key}", "is required for an esp32 board")
            if "env" in b:
                raise RigConfigError(f"{where}.env", "only virtual boards have a scripted environment")
        for n in range(count):
            board_id = bid if count == 1 else f"{bid}-{n + 1}"
            device = str(b.get("device", f"{prefix}{board_id}"))
            if not contract.is_id(device):
                raise RigConfigError(f"{where}.device", f"{device!r} must be of A-Z a-z 0-9 _ -")
            _check_board_config(device, place, board_config, config, where)
            boards.append(
                BoardSpec(
                    id=board_id,
                    kind=kind,
                    place=place,
                    device=device,
                    port=str(b.get("port", "")),
                    env=_env(b.get("env"), place, f"{where}.env") if kind == "virtual" else {},
                    power=power,
                    tolerance=tolerance or (dict(VIRTUAL_TOLERANCE) if kind == "virtual" else {}),
                    config={**board_config, **config},
                    profile=profile,
                )
            )
    ids = [b.id for b in boards]
    for bid in ids:
        if ids.count(bid) > 1:
            raise RigConfigError("boards", f"board id {bid!r} is used twice")
    return boards


def _check_board_config(
    device: str, place: str, shared: dict[str, Any], own: dict[str, Any], where: str
) -> None:
    """The config.json the rig will write for this board, checked by the firmware's own checker now,
    so a bad value names its key in the rig file (`board_config.interval_s`), not a generated file
    at flash time. The broker is the board's fault proxy, known only when the run starts: any valid
    URL stands for it here."""
    from hil.flash import firmware_config_module

    fw = firmware_config_module()
    full = {"device": device, "place": place, "broker": "mqtt://127.0.0.1:1883", **shared, **own}
    try:
        fw.parse(json.dumps(full))
    except fw.ConfigError as exc:
        field = str(exc.field)
        key = (
            f"{where}.config.{field}"
            if field in own
            else f"board_config.{field}"
            if field in shared
            else f"{where}.{field}"
        )
        raise RigConfigError(key, f"{exc.problem} (the firmware's config check)") from None


def _firmware_defaults() -> dict[str, Any]:
    from hil.flash import firmware_config_module

    defaults: dict[str, Any] = firmware_config_module().DEFAULTS
    return defaults


def _scenarios(raw: Any, board_ids: set[str]) -> list[Scenario]:
    if not isinstance(raw, list) or not raw:
        raise RigConfigError("scenarios", "must be a non-empty list")
    out: list[Scenario] = []
    for i, item in enumerate(raw):
        where = f"scenarios[{i}]"
        s = _mapping(item, where, {"name", "steps", "boards"})
        if "name" not in s:
            raise RigConfigError(f"{where}.name", "is required")
        name = _typed(s["name"], str, f"{where}.name")
        steps_raw = s.get("steps")
        if not isinstance(steps_raw, list) or not steps_raw:
            raise RigConfigError(f"{where}.steps", "must be a non-empty list of steps")
        steps = tuple(_step(st, f"{where}.steps[{j}]") for j, st in enumerate(steps_raw))
        boards = tuple(s.get("boards") or ())
        for b in boards:
            if b not in board_ids:
                raise RigConfigError(
                    f"{where}.boards", f"no board {b!r}; boards: {', '.join(sorted(board_ids))}"
                )
        out.append(Scenario(name, steps, boards))
    names = [s.name for s in out]
    for n in names:
        if names.count(n) > 1:
            raise RigConfigError("scenarios", f"scenario name {n!r} is used twice")
    return out


def _stack(raw: Any) -> StackSpec:
    s = _mapping(
        raw,
        "stack",
        {
            "broker",
            "kafka",
            "mongo",
            "services",
            "proxy_host",
            "advertise_host",
            "tumbling_s",
            "grace_s",
            "mqtt_user",
            "mqtt_password_env",
            "keep_database",
        },
    )
    broker = str(s.get("broker", "private"))
    if broker != "private" and not broker.startswith("mqtt://"):
        raise RigConfigError("stack.broker", f"private or mqtt://host:port, got {broker!r}")
    services = str(s.get("services", "start"))
    if services not in ("start", "running"):
        raise RigConfigError("stack.services", f"start or running, got {services!r}")
    if services == "start":
        # The run's own gateway and backend on the product's broker or Kafka would cross over: the
        # product's gateway bridges the run's boards, the product's backend (group iot-backend)
        # windows the run's readings from iot.readings, and the run's services take the product's.
        for key, value in (("broker", None if broker == "private" else broker), ("kafka", s.get("kafka"))):
            if value is not None:
                raise RigConfigError(
                    f"stack.{key}",
                    f"{value!r} with services: start: the run's readings would reach the product's "
                    f"windows; with services: start the rig runs its own {key} (omit the key), "
                    "with services: running it uses the product's",
                )
    return StackSpec(
        broker=broker,
        own_kafka=services == "start",
        kafka=_from_env(
            lambda r: KafkaConnection.read(r), "IOT_KAFKA_BOOTSTRAP", s.get("kafka"), "stack.kafka"
        ),
        mongo=_from_env(
            lambda r: r.mongo_uri("IOT_MONGO_URI"), "IOT_MONGO_URI", s.get("mongo"), "stack.mongo"
        ),
        services=services,
        proxy_host=str(s.get("proxy_host", "127.0.0.1")),
        advertise_host=str(s.get("advertise_host", "127.0.0.1")),
        tumbling_s=int(_typed(s.get("tumbling_s", 10), int, "stack.tumbling_s")),
        grace_s=int(_typed(s.get("grace_s", 2), int, "stack.grace_s")),
        mqtt_user=str(s.get("mqtt_user", "")),
        mqtt_password=_secret(s.get("mqtt_password_env"), "stack.mqtt_password_env"),
        keep_database=bool(_typed(s.get("keep_database", False), bool, "stack.keep_database")),
    )


def _from_env(read: Callable[[EnvReader], T], variable: str, value: Any, where: str) -> T:
    """A setting the rig file may give (`where`) over the environment's `variable` (the product's own
    reader and default: IOT_KAFKA_* and IOT_MONGO_URI as the gateway and backend read them)."""
    env = dict(os.environ)
    if value is not None:
        env[variable] = str(value)
    try:
        return read(VARIABLES.reader(env))
    except ConfigError as exc:
        if value is not None and exc.field == variable:
            raise RigConfigError(where, exc.problem) from None
        raise


def _secret(env_name: Any, where: str) -> str:
    if env_name is None:
        return ""
    value = os.environ.get(str(env_name))
    if value is None:
        raise RigConfigError(where, f"environment variable {env_name} is not set")
    return value


def _firmware(raw: Any) -> FirmwareSpec:
    f = _mapping(raw, "firmware", {"dir", "version", "mpy"})
    directory = Path(str(f.get("dir", paths.FIRMWARE)))
    if not directory.is_absolute():
        directory = (paths.REPO / directory).resolve()
    if not (directory / "main.py").exists():
        raise RigConfigError("firmware.dir", f"{directory} has no main.py")
    return FirmwareSpec(
        directory, str(f.get("version", "")), bool(_typed(f.get("mpy", False), bool, "firmware.mpy"))
    )


def parse(text: str, path: Path, run_id: str) -> Rig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RigConfigError("(file)", f"{path} is not valid YAML: {exc}") from exc
    top = _mapping(raw, "", _TOP)
    prefix = str(top.get("device_prefix", "hil-{run}-")).replace("{run}", run_id)
    board_config = _mapping(top.get("board_config"), "board_config", set(_firmware_defaults()))
    boards = _boards(top.get("boards"), prefix, board_config)
    scenarios = _scenarios(top.get("scenarios"), {b.id for b in boards})
    return Rig(
        name=str(top.get("rig", path.stem)),
        path=path,
        stack=_stack(top.get("stack")),
        firmware=_firmware(top.get("firmware")),
        boards=tuple(boards),
        scenarios=tuple(scenarios),
        run_id=run_id,
    )


def load(path: Path, run_id: str = "check") -> Rig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RigConfigError("(file)", f"cannot read {path}: {exc}") from exc
    return parse(text, path, run_id)

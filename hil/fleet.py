"""`iot boards`: a fleet of virtual boards in several places, publishing to the real broker.

Each place has a deterministic environment (hil.virtual.env), so what a board measures at time t is
known in advance: `expected_values(place, t)` gives it, and `boards.json` in the state directory
lists every board with its place and environment for the tools that check the windows downstream.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil import board_flash
from hil.errors import RigConfigError
from hil.probe import Probe
from hil.vboard_process import DEFAULT_HEAP, EXIT_CONFIG, VirtualBoard
from hil.virtual import env as envmod
from hil.virtual import vprofile
from iot import contract, log
from iot import mqtt as mqtt_conn
from iot.broker import credentials
from iot.devices.provision import DevicesSettings, Provisioner
from iot.env import CONTRACT, LOG, MqttEndpoint, Var, Variables, writable_dir
from iot.errors import ConfigError

_log = log.get("hil.fleet")
# What `iot boards` and `iot flash` read (their --help lists them).
VARIABLES = Variables(
    mqtt_conn.VARIABLES.pick("IOT_MQTT_URL", "IOT_MQTT_TLS_CA"),
    mqtt_conn.OPERATOR,
    CONTRACT.pick("IOT_MONGO_URI"),
    Var("IOT_BOARDS_DIR", None, "where virtual boards keep their flash", shown=".cache/boards"),
    LOG,
)
ENV_KINDS = ("constant", "day")
MAX_RESTARTS = 5


def place_names(count: int) -> list[str]:
    known = list(envmod.PLACE_ORDER)
    return known[:count] + [f"place{i}" for i in range(len(known) + 1, count + 1)]


def environment(place: str, kind: str = "constant") -> dict[str, dict[str, object]]:
    if kind == "constant":
        return envmod.constant_spec(place)
    if kind == "day":
        return envmod.day_spec(place)
    raise RigConfigError("env", f"unknown environment kind {kind!r}; use one of {', '.join(ENV_KINDS)}")


def expected_values(place: str, t: float, kind: str = "constant") -> dict[str, float]:
    """What a board in `place` measures at epoch time t (s), before sensor noise and rounding."""
    return envmod.values_at(environment(place, kind), t)


# Where a board keeps the broker's CA on its flash (config `tls_ca_file`).
TLS_CA_NAME = "ca.crt"
OTA_KEY_NAME = "ota.pub"  # iot.contract.OTA_KEY_FILE


@dataclass(frozen=True)
class Broker:
    """The broker the boards use, read from the environment as the gateway reads it: IOT_MQTT_URL
    (`mqtt://host:port`, `mqtts://host:port` for TLS) and IOT_MQTT_TLS_CA (the CA the boards verify it
    with; setting it turns TLS on, as for the gateway). A board has no CA bundle, so TLS needs the
    CA file; each board gets a copy on its flash."""

    endpoint: MqttEndpoint
    ca: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Broker:
        reader = VARIABLES.reader(env)
        endpoint = reader.mqtt_url("IOT_MQTT_URL")
        ca_text = reader.path("IOT_MQTT_TLS_CA")
        ca = Path(ca_text) if ca_text else None
        if ca is None and endpoint.tls:
            raise ConfigError(
                "IOT_MQTT_TLS_CA",
                f"is required for {endpoint.url}: a board has no CA bundle and verifies the broker with "
                "this file (the native stack's is .stack/tls/ca.crt)",
            )
        if ca is not None:
            head = ca.read_bytes()[:64]
            if b"-----BEGIN CERTIFICATE-----" not in head and not head.startswith(b"\x30\x82"):
                raise ConfigError("IOT_MQTT_TLS_CA", f"{ca} is neither a PEM nor a DER certificate")
            endpoint = MqttEndpoint(endpoint.host, endpoint.port, True)
        return cls(endpoint, ca)

    @property
    def url(self) -> str:
        return self.endpoint.url

    def tls_config(self) -> dict[str, Any]:
        """What a board's config needs beyond `broker` for this broker: its CA file, over TLS."""
        return {"tls_ca_file": TLS_CA_NAME} if self.ca is not None else {}

    def provisioning(self, env: Mapping[str, str] | None = None) -> DevicesSettings | None:
        """How boards get their accounts on this broker: as `iot devices add` gives them, with the
        operator's account (IOT_MQTT_OPERATOR_*, else the native stack's credentials file) and the
        registry (IOT_MONGO_URI). None when there is no operator account: a broker without
        authentication, where boards connect without credentials."""
        operator = credentials.find(credentials.OPERATOR, env)
        if operator is None:
            return None
        mongo = VARIABLES.reader(env).mongo_uri("IOT_MONGO_URI")
        return DevicesSettings(self.endpoint, str(self.ca) if self.ca else None, operator, mongo)


@dataclass(frozen=True)
class BoardPlan:
    device: str
    place: str
    config: dict[str, Any]
    spec: dict[str, Any]


def plan(
    count: int,
    places: int,
    interval_s: float,
    broker: str,
    prefix: str = "vb",
    env_kind: str = "constant",
    time_sync: bool = True,
    extra_config: dict[str, Any] | None = None,
    environments: dict[str, Any] | None = None,
    profile: str = vprofile.DEFAULT,
) -> list[BoardPlan]:
    """Boards spread round-robin over the first `places` place names; `environments` (place ->
    env spec) overrides the built-in environment of a place; `profile`: the MicroPython version
    every board runs (hil/virtual/vprofile.py)."""
    if count < 1:
        raise RigConfigError("count", "must be at least 1")
    if not 1 <= places <= count:
        raise RigConfigError("places", f"must be between 1 and the board count ({count})")
    if profile not in vprofile.PROFILES:
        raise RigConfigError("profile", f"{profile!r}: one of {', '.join(vprofile.PROFILES)}")
    if not contract.is_id(prefix) or len(prefix) > 40:
        raise RigConfigError("prefix", f"{prefix!r} must be 1..40 of A-Z a-z 0-9 _ -")
    names = place_names(places)
    boards = []
    for i in range(count):
        place = names[i % places]
        device = f"{prefix}-{place}-{i // places + 1:02d}"
        cfg: dict[str, Any] = {
            "device": device,
            "place": place,
            "broker": broker,
            "interval_s": interval_s,
            "health_every_s": max(5, min(60, interval_s * 10)),
        }
        cfg.update(extra_config or {})
        env_spec = (environments or {}).get(place) or environment(place, env_kind)
        spec = {"env": env_spec, "time_sync": time_sync, "seed": i + 1, "profile": profile}
        boards.append(BoardPlan(device, place, cfg, spec))
    return boards


@dataclass
class Fleet:
    root: Path
    plans: list[BoardPlan]
    heap: str = DEFAULT_HEAP
    serial: bool = False
    tls_ca: Path | None = None  # copied onto every board's flash as TLS_CA_NAME
    # Each board gets its own broker account and registry entry (`iot devices`); None: no credentials.
    provisioning: DevicesSettings | None = None
    ota_key: Path | None = None  # copied onto every board's flash as ota.pub (`iot ota keygen`)
    boards: list[VirtualBoard] = field(default_factory=list)
    restarts: int = 0

    def prepare(self, fresh: bool) -> None:
        known = self._known_passwords()
        if fresh and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.provisioning is not None:
            self._provision(self.provisioning, known)
        self.boards = [VirtualBoard(self.root, p.config, p.spec, self.heap, self.serial) for p in self.plans]
        ca = self.tls_ca.read_bytes() if self.tls_ca is not None else None
        key = self.ota_key.read_bytes() if self.ota_key is not None else None
        for board in self.boards:
            board.write_files()
            if ca is not None:
                board.flash.write(TLS_CA_NAME, ca)
            if key is not None:
                board.flash.write(OTA_KEY_NAME, key)
            board.restore_network()
            if self.serial:
                board.install_firmware()
        self.write_manifest()

    def _known_passwords(self) -> dict[str, str]:
        """The passwords the boards' configs already hold (a fleet started again keeps them)."""
        known = {}
        for plan in self.plans:
            try:
                text = board_flash.of_board(self.root / plan.device, self.serial).read("config.json")
                stored = json.loads(text or b"")
            except (OSError, ValueError):
                continue
            if isinstance(stored, dict) and isinstance(stored.get("mqtt_password"), str):
                known[plan.device] = stored["mqtt_password"]
        return known

    def _provision(self, settings: DevicesSettings, known: dict[str, str]) -> None:
        started = time.monotonic()
        step = max(1, len(self.plans) // 10)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                print(f"boards provisioned {done}/{total}", flush=True)

        with Provisioner.open(settings) as prov:
            passwords = prov.ensure_all(
                [(p.place, p.device, known.get(p.device)) for p in self.plans],
                progress if len(self.plans) >= 50 else None,
            )
        for plan in self.plans:
            plan.config["mqtt_user"] = plan.device
            plan.config["mqtt_password"] = passwords[plan.device]
        _log.info(
            "boards_provisioned",
            boards=len(self.plans),
            kept=sum(1 for p in self.plans if known.get(p.device) == passwords[p.device]),
            seconds=f"{time.monotonic() - started:.1f}",
        )

    def remove_accounts(self) -> None:
        """Revoke the boards' accounts and registry entries (`iot devices remove`): for throwaway
        fleets (tests, benchmarks); a user's fleet keeps them, so it starts again with the same."""
        if self.provisioning is None:
            return
        with Provisioner.open(self.provisioning) as prov:
            for plan in self.plans:
                prov.remove(plan.device)

    def write_manifest(self) -> None:
        manifest: list[dict[str, Any]] = []
        for b in self.boards:
            entry: dict[str, Any] = {"device": b.device, "place": b.place, "env": b.spec["env"]}
            if b.serial:
                entry["port"] = b.port
            manifest.append(entry)
        (self.root / "boards.json").write_text(json.dumps(manifest, indent=1))

    def start(self) -> None:
        for board in self.boards:
            board.start()

    def supervise(self) -> None:
        """Restart boards that exited (a reset, watchdog or crash), as a real board would reboot."""
        for board in self.boards:
            code = board.returncode
            if code is None or board.running:
                continue
            if code == EXIT_CONFIG or board.starts > MAX_RESTARTS:
                continue
            _log.warning(
                "board_restarted",
                device=board.device,
                exit_code=code,
                starts=board.starts,
                console=str(board.console_path),
            )
            self.restarts += 1
            board.start()

    def running(self) -> int:
        return sum(1 for b in self.boards if b.running)

    def failed(self) -> list[VirtualBoard]:
        return [b for b in self.boards if not b.running and b.returncode is not None]

    def stop(self) -> None:
        for board in self.boards:
            if board.running and board.proc is not None:
                board.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        for board in self.boards:
            if board.proc is None:
                continue
            try:
                board.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                board.kill()

    def rss_kb(self) -> list[int]:
        return [kb for kb in (b.rss_kb() for b in self.boards) if kb is not None]


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_fleet(
    plans: list[BoardPlan],
    root: Path,
    broker: str,
    duration: float = 0.0,
    heap: str = DEFAULT_HEAP,
    fresh: bool = False,
    progress_every: float = 10.0,
    serial: bool = False,
    tls_ca: Path | None = None,
    provisioning: DevicesSettings | None = None,
    ota_key: Path | None = None,
) -> int:
    """Run the boards until `duration` (0: until interrupted); `broker` is also where the fleet's
    probe counts their readings, verifying an mqtts:// broker with `tls_ca`, logged in as the operator
    when `provisioning` gives the boards accounts."""
    fleet = Fleet(root, plans, heap, serial, tls_ca, provisioning, ota_key)
    fleet.prepare(fresh)
    devices = {p.device for p in plans}
    operator = provisioning.operator if provisioning else None
    probe = Probe(
        broker,
        [contract.READING_SUBSCRIPTION],
        keep=lambda t: t.split("/")[2:3][0] in devices,
        tls_ca=str(tls_ca) if tls_ca else None,
        username=operator.username if operator else "",
        password=operator.password if operator else "",
    )
    probe.start()
    if provisioning is None:
        print(
            "boards connect without broker credentials: no operator account (IOT_MQTT_OPERATOR_USERNAME/"
            "IOT_MQTT_OPERATOR_PASSWORD or the native stack's .stack/credentials.json); a broker that "
            "authenticates refuses them",
            flush=True,
        )
    refused: set[str] = set()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    fleet.start()
    print(
        f"boards started count={len(plans)} places={len({p.place for p in plans})} state={root} "
        f"broker={broker}",
        flush=True,
    )
    for board in fleet.boards:
        if board.serial:
            print(f"board {board.device} port={board.port}", flush=True)
    last_count, last_at = 0, started
    try:
        while duration <= 0 or time.monotonic() - started < duration:
            time.sleep(0.5)
            fleet.supervise()
            now = time.monotonic()
            if now - last_at >= progress_every:
                count = probe.count()
                online = len(
                    {m.topic.split("/")[2] for m in probe.messages("reading") if m.at > time.time() - 30}
                )
                print(
                    f"boards running={fleet.running()}/{len(plans)} publishing={online} readings={count} "
                    f"rate={(count - last_count) / (now - last_at):.1f}/s restarts={fleet.restarts}",
                    flush=True,
                )
                last_count, last_at = count, now
                for board in fleet.boards:
                    why = board.login_refused() if board.device not in refused else None
                    if why:
                        refused.add(board.device)
                        print(
                            f"board {board.device}: the broker refused its login ({why}); its account is "
                            f"missing or removed, or its password is not the broker's: `iot devices show "
                            f"{board.device}`",
                            flush=True,
                        )
            if not fleet.running() and fleet.failed():
                break
    except KeyboardInterrupt:
        pass
    finally:
        rss = fleet.rss_kb()
        fleet.stop()
        signal.signal(signal.SIGTERM, previous)
        probe.stop()
    elapsed = time.monotonic() - started
    per_board = [len(probe.readings(d)) for d in sorted(devices)]
    failed = [b.device for b in fleet.failed() if b.returncode not in (0, None)]
    mean_rss = sum(rss) / len(rss) / 1024 if rss else 0.0
    print(
        f"boards stopped count={len(plans)} seconds={elapsed:.0f} readings={sum(per_board)} "
        f"per_board_min={min(per_board)} per_board_max={max(per_board)} rss_mb_mean={mean_rss:.1f} "
        f"restarts={fleet.restarts} failed={','.join(failed) or 'none'}",
        flush=True,
    )
    for board in fleet.boards:
        if board.returncode == EXIT_CONFIG:
            print(f"board {board.device} halted on its config: {board.console().strip().splitlines()[-1]}")
    return 1 if failed else 0


def load_environments(path: Path) -> dict[str, Any]:
    """A JSON file of place -> environment spec (see hil/virtual/env.py), each checked."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RigConfigError("--env-file", f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise RigConfigError("--env-file", "must be a JSON object of place -> environment")
    for place, spec in raw.items():
        try:
            envmod.validate(spec)
        except envmod.EnvError as exc:
            raise RigConfigError(f"{place}", str(exc)) from exc
    return raw


def default_state_dir() -> Path:
    """IOT_BOARDS_DIR or .cache/boards, made if needed and proven writable."""
    return writable_dir(
        "IOT_BOARDS_DIR", VARIABLES.reader().text("IOT_BOARDS_DIR", str(Path.cwd() / ".cache" / "boards"))
    )

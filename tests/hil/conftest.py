"""Fixtures for virtual-board tests: the real broker, an MQTT probe, boards that are always cleaned up."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import fleet, paths
from hil.netfault import StallProxy
from hil.probe import Probe, broker_address, clear_retained
from hil.vboard_process import DEFAULT_HEAP, VirtualBoard
from hil.virtual import outbox_reader, vprofile
from iot import contract
from iot.devices.provision import DevicesSettings, Provisioner
from iot.env import parse_mqtt_url
from iot.harness.broker import PrivateBroker
from tests.devices.conftest import MONGO
from tests.support import unique, wait_for


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = os.environ.get("IOT_MQTT_URL", contract.ENV_DEFAULTS["IOT_MQTT_URL"])
    host, port = broker_address(url)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"no MQTT broker at {url} ({exc}); start the stack with `.venv/bin/iot stack up`")
    return url


BoardFactory = Callable[..., VirtualBoard]


@pytest.fixture
def make_board(tmp_path: Path, broker_url: str) -> Iterator[BoardFactory]:
    """Virtual boards on the stack's broker, each with an account of its own (as `iot devices add`
    makes it, removed again at the end) unless the test gives it `mqtt_user`."""
    made: list[VirtualBoard] = []
    provisioning = fleet.Broker.from_env().provisioning()
    provisioned: list[str] = []

    def factory(
        place: str = "kitchen",
        spec: dict[str, Any] | None = None,
        serial: bool = False,
        firmware_dir: Path = paths.FIRMWARE,
        heap: str = DEFAULT_HEAP,
        profile: str = vprofile.DEFAULT,
        **config: Any,
    ) -> VirtualBoard:
        device = unique("vt")
        cfg: dict[str, Any] = {
            "device": device,
            "place": place,
            "broker": broker_url,
            "interval_s": 0.3,
            "health_every_s": 1,
            "backoff_min_s": 0.1,
            "backoff_max_s": 0.5,
            "puback_timeout_s": 1,
            "e2e_ack": False,  # no gateway on these tests' broker: the PUBACK releases a reading
        }
        cfg.update(config)
        if provisioning is not None and "mqtt_user" not in cfg:
            with Provisioner.open(provisioning) as prov:
                cfg["mqtt_password"] = prov.add(cfg["place"], cfg["device"])
            cfg["mqtt_user"] = cfg["device"]
            provisioned.append(cfg["device"])
        # Wi-Fi associates in 0.2 s (the board's default is 1 s): tests about association say so.
        board_spec: dict[str, Any] = {
            "env": fleet.environment(place),
            "seed": len(made) + 1,
            "wifi_assoc_ms": 200,
        }
        board_spec.update(spec or {})
        board = VirtualBoard(
            tmp_path / "boards",
            cfg,
            board_spec,
            serial=serial,
            firmware_dir=firmware_dir,
            heap=heap,
            profile=profile,
        )
        board.write_files()
        made.append(board)
        return board

    yield factory
    for board in made:
        board.kill()
    clear_retained(broker_url, [(b.place, b.device) for b in made])
    if provisioned and provisioning is not None:
        with Provisioner.open(provisioning) as prov:
            for device in provisioned:
                prov.remove(device)


# Firmware-behaviour tests run on the oldest and the newest MicroPython profile; the rest on the
# default one, so the second profile costs only the tests where the versions differ.
@pytest.fixture(params=[vprofile.OLDEST, vprofile.NEWEST])
def profile(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def probe(broker_url: str) -> Iterator[Probe]:
    # Only our own boards' topics (vt-<uuid>): other engineers' boards share the broker.
    with Probe(
        broker_url,
        ["sensors/+/+/#"],
        keep=lambda t: t.split("/")[2:3] != [] and t.split("/")[2].startswith("vt-"),
    ) as p:
        yield p


def outbox_state(board: VirtualBoard) -> tuple[int, int, int]:
    """(0, readings in flash, dropped) straight from the board's flash (outbox segments)."""
    box = outbox_reader.read(board.flash)
    return 0, len(box.entries), box.dropped


def outbox_entries(board: VirtualBoard) -> list[dict[str, Any]]:
    """The readings kept in the board's flash outbox, oldest first."""
    return outbox_reader.read(board.flash).entries


def seqs_of(readings: list[dict[str, Any]], boot: int = 0) -> list[int]:
    """The seqs of one boot's readings, in arrival order (repeats included)."""
    return [r["seq"] for r in readings if r["boot"] == boot]


def health_of(probe: Probe, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in probe.messages("health", device)]


def first_occurrences(seqs: list[int]) -> list[int]:
    """seqs without repeats, each where it first arrived."""
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def rides_out_a_stall(board: VirtualBoard, probe: Probe, proxy: StallProxy, first_s: float = 20) -> None:
    """Start `board` behind `proxy`, stall the broker's next packet mid-way for 1.6 s (longer than the
    board's 1 s socket timeout), and check the board kept its one session and went on publishing."""
    board.start()
    wait_for(lambda: len(probe.readings(board.device)) >= 3, first_s, "3 readings")
    proxy.stall_next(1.6)
    wait_for(lambda: proxy.stalls == 1, 10, "the stall")
    seen = len(probe.readings(board.device))
    wait_for(lambda: len(probe.readings(board.device)) >= seen + 5, 20, "readings after the stall")
    console = board.console()
    assert "link_down" not in console, console[-1500:]
    assert proxy.connections == 1


def publishing(board: VirtualBoard, probe: Probe, timeout: float = 20) -> VirtualBoard:
    """`board` started, once its first reading reached the broker."""
    board.start()
    wait_for(lambda: probe.readings(board.device), timeout, "a first reading")
    return board


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A private Mosquitto with accounts (dynamic security), as the native stack's: its operator
    provisions the boards, each logs in with its own account."""
    with PrivateBroker(tmp_path_factory.mktemp("auth-broker"), accounts=True, persistent=False) as broker:
        yield broker


@pytest.fixture
def settings(auth_broker: PrivateBroker) -> Iterator[DevicesSettings]:
    """Provisioning on `auth_broker`, its registry in a database of the test's own."""
    import pymongo

    name = unique("hilreg").replace("-", "_")
    yield DevicesSettings(parse_mqtt_url(auth_broker.url), None, auth_broker.operator, f"{MONGO}/{name}")
    pymongo.MongoClient(MONGO).drop_database(name)


def provisioned(
    make_board: BoardFactory,
    settings: DevicesSettings,
    broker: PrivateBroker,
    prefix: str = "vt",
    password: str = "",
    **config: Any,
) -> tuple[VirtualBoard, str]:
    """A board added in kitchen by the operator (`iot devices add`) and configured with its account
    (or with `password` instead of the one it was given); returns the board and that password."""
    device = unique(prefix)
    with Provisioner.open(settings) as prov:
        given = prov.add("kitchen", device)
    board = make_board(
        broker=broker.url, device=device, mqtt_user=device, mqtt_password=password or given, **config
    )
    return board, given

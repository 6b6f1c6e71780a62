"""The shipped broker config, run on a real Mosquitto: accounts, per-device ACLs, and a hostile board.

The compose stack's steps, run here the way compose runs them: `install-certs.sh` and
`dynsec-init.sh` (the operator's account), Mosquitto with compose/mosquitto/mosquitto.conf and the
dynamic-security plugin, then `iot devices setup` (broker-accounts: roles and the gateway's account)
and boards provisioned as `iot devices add` provisions them. Debian's Mosquitto is 2.0.11, the
compose image's 2.0.20; their dynamic-security plugin and ACL checks are the same code for what is
tested here (docs/CONTRACT.md, "Accounts, ACL and provisioning").
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iot import contract
from iot.app.stack import tls
from iot.broker import accounts
from iot.broker.credentials import Credentials
from iot.broker.dynsec import Dynsec
from iot.env import parse_mqtt_url
from iot.harness import payloads
from iot.harness.ports import free_ports, listening
from tests.peer import Peer, refused
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "compose" / "mosquitto"
IOT = ROOT / ".venv" / "bin" / "iot"
PLUGIN_IN_IMAGE = "/usr/lib/mosquitto_dynamic_security.so"
PLUGIN_HERE = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
GATEWAY_GROUP = "iot-gateway"
GATEWAY_CLIENT_ID = "iot-gateway-1"  # the compose file's
BOARDS = {"kitchen-1": "kitchen", "garage-1": "garage"}


@dataclass(frozen=True)
class Broker:
    port: int
    tls_port: int
    ca: Path
    operator: Credentials
    gateway: Credentials
    boards: dict[str, Credentials]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsFiles:
    """Certificates as `iot stack certs --dir compose/mosquitto/certs` makes them (once: RSA keys)."""
    return tls.ensure(tmp_path_factory.mktemp("certs-src"), ["localhost", "127.0.0.1"])


def compose_conf(port: int, tls_port: int, certs: Path, dynsec_dir: Path) -> str:
    conf = (SHIPPED / "mosquitto.conf").read_text()
    assert PLUGIN_IN_IMAGE in conf and "/mosquitto/dynsec/" in conf
    conf = (
        conf.replace("listener 1883", f"listener {port} 127.0.0.1")
        .replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        .replace("/mosquitto/certs/", f"{certs}/")
        .replace(PLUGIN_IN_IMAGE, PLUGIN_HERE)
        .replace("/mosquitto/dynsec/", f"{dynsec_dir}/")
        .replace("persistence true", "persistence false")
    )
    # Running as root, mosquitto would drop to its own user, which cannot read pytest's tmp folder.
    return conf + f"user {getpass.getuser()}\n"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, made: tls.TlsFiles) -> Iterator[Broker]:
    """The compose broker's start-up, step by step, then its boards as `iot devices add` makes them."""
    tmp = tmp_path_factory.mktemp("compose-broker")
    port, tls_port = free_ports(2)
    certs = tmp / "certs"
    certs.mkdir()
    subprocess.run(
        ["sh", str(SHIPPED / "install-certs.sh")],
        env={**os.environ, "CERTS_SRC": str(made.ca.parent), "CERTS_DIR": str(certs)},
        check=True,
        capture_output=True,
    )
    operator = Credentials("operator", unique("op-secret"))
    gateway = Credentials("gateway", unique("gw-secret"))
    dynsec_dir = tmp / "dynsec"
    init = subprocess.run(
        ["sh", str(SHIPPED / "dynsec-init.sh")],
        env={
            **os.environ,
            "DYNSEC_FILE": str(dynsec_dir / "dynamic-security.json"),
            "MQTT_OPERATOR_PASSWORD": operator.password,
        },
        check=True,
        capture_output=True,
        text=True,
    )
    assert "created" in init.stdout
    (tmp / "mosquitto.conf").write_text(compose_conf(port, tls_port, certs, dynsec_dir))
    proc = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(tmp / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(port) and listening(tls_port), 10, "the private mosquitto to listen")
        setup_env = {
            **os.environ,
            "IOT_MQTT_URL": f"mqtt://127.0.0.1:{port}",
            **operator.as_env("operator"),
            **gateway.as_env("gateway"),
        }
        setup = subprocess.run(
            [str(IOT), "devices", "setup"], env=setup_env, capture_output=True, text=True, check=False
        )
        assert setup.returncode == 0, setup.stderr
        assert gateway.password not in setup.stdout + setup.stderr
        boards = {}
        with Dynsec(parse_mqtt_url(f"mqtt://127.0.0.1:{port}"), operator) as dynsec:
            for device, place in BOARDS.items():
                boards[device] = Credentials(device, unique(f"{device}-secret"))
                accounts.create_device(dynsec, place, device, boards[device].password)
        yield Broker(port, tls_port, certs / "ca.crt", operator, gateway, boards)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def gateway(shipped: Broker) -> Iterator[Peer]:
    """The gateway as compose runs it: its client id, a persistent session in the shared group."""
    peer = Peer(shipped.port, shipped.gateway, GATEWAY_CLIENT_ID, clean_start=False)
    assert peer.accepted
    assert not refused(peer.subscribe(f"$share/{GATEWAY_GROUP}/{contract.READING_SUBSCRIPTION}"))
    yield peer
    peer.close()


def _board(shipped: Broker, device: str) -> Iterator[Peer]:
    peer = Peer(shipped.port, shipped.boards[device], device)
    assert peer.accepted
    yield peer
    peer.close()


@pytest.fixture
def kitchen(shipped: Broker) -> Iterator[Peer]:
    yield from _board(shipped, "kitchen-1")


@pytest.fixture
def hostile(shipped: Broker) -> Iterator[Peer]:
    """garage-1's real credentials in the hands of someone who wants more than its lane."""
    yield from _board(shipped, "garage-1")


class GoodTraffic:
    """kitchen-1 publishing readings around an attack; the gateway must get every one, in order."""

    def __init__(self, board: Peer, gateway: Peer) -> None:
        self.board = board
        self.gateway = gateway
        self.sent: list[int] = []

    def burst(self, count: int = 5) -> None:
        for _ in range(count):
            seq = len(self.sent)
            reading = payloads.reading("kitchen", "kitchen-1", seq)
            assert not self.board.publish(
                contract.reading_topic("kitchen", "kitchen-1"), _json(reading)
            ).is_failure
            self.sent.append(seq)

    def all_arrived(self) -> None:
        def got() -> list[int]:
            return [
                json.loads(p)["seq"]
                for t, p in self.gateway.messages
                if t == contract.reading_topic("kitchen", "kitchen-1")
            ]

        wait_for(lambda: len(got()) >= len(self.sent), 10, f"{len(self.sent)} good readings at the gateway")
        assert got() == self.sent, "the gateway lost, doubled or reordered good readings"
        assert self.gateway.disconnects == [], f"the gateway was disconnected: {self.gateway.disconnects}"


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def good(kitchen: Peer, gateway: Peer) -> GoodTraffic:
    return GoodTraffic(kitchen, gateway)


# --- accounts --------------------------------------------------------------------------------


def test_anonymous_and_wrong_password_are_refused(shipped: Broker) -> None:
    anon = Peer(shipped.port, None)
    anon.client.loop_stop()
    assert not anon.accepted
    wrong = Peer(shipped.port, Credentials("kitchen-1", "wrong"), "kitchen-1")
    wrong.client.loop_stop()
    assert not wrong.accepted


def test_setup_is_idempotent_and_keeps_a_connected_gateway(shipped: Broker, gateway: Peer) -> None:
    """broker-accounts runs at every `compose up`: with nothing to change it must not disconnect the
    gateway (the plugin disconnects an account whose password or roles change)."""
    env = {
        **os.environ,
        "IOT_MQTT_URL": f"mqtt://127.0.0.1:{shipped.port}",
        **shipped.operator.as_env("operator"),
        **shipped.gateway.as_env("gateway"),
    }
    again = subprocess.run(
        [str(IOT), "devices", "setup"], env=env, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr
    assert "already in place" in again.stdout
    gateway.round_trip()  # had setup changed its account, the broker would have closed it before
    assert gateway.disconnects == []


# --- the lanes -------------------------------------------------------------------------------


def test_device_publishes_only_under_its_own_id_and_place(gateway: Peer, kitchen: Peer) -> None:
    forbidden = [
        "sensors/kitchen/garage-1/reading",  # another board
        "sensors/garage/kitchen-1/reading",  # itself, in another place
        "sensors/kitchen/kitchen-1/ack",  # an ack would release readings Kafka does not hold
        "sensors/kitchen/kitchen-1/config",
        "sensors/kitchen/kitchen-1/ota",
        "other/topic",
    ]
    for topic in forbidden:
        assert kitchen.publish(topic, b"{}").is_failure, f"kitchen-1 may publish to {topic}"
    for kind in ("reading", "status", "health"):
        assert not kitchen.publish(f"sensors/kitchen/kitchen-1/{kind}", b"{}").is_failure
    # Same connection, QoS 1, in order: had a forbidden one been routed it would have arrived first.
    wait_for(lambda: gateway.messages, 5, "the allowed reading at the gateway")
    assert [t for t, _p in gateway.messages] == ["sensors/kitchen/kitchen-1/reading"]


def test_device_reads_only_its_own_acks_which_only_the_gateway_writes(gateway: Peer, kitchen: Peer) -> None:
    """End-to-end acks (docs/CONTRACT.md): the gateway publishes sensors/{place}/{device}/ack; a board
    subscribes to its own and to nothing wider."""
    assert not refused(kitchen.subscribe("sensors/kitchen/kitchen-1/ack", qos=0))
    assert refused(kitchen.subscribe("sensors/+/+/ack", qos=0))
    assert not gateway.publish("sensors/garage/garage-1/ack", b'{"boot":0,"ranges":[[0,9]]}').is_failure
    assert not gateway.publish("sensors/kitchen/kitchen-1/ack", b'{"boot":0,"ranges":[[5,5]]}').is_failure
    # Same gateway connection, in order: once the last one arrived, anything routed earlier has too.
    wait_for(lambda: kitchen.messages, 5, "kitchen-1's ack")
    assert kitchen.topics() == {"sensors/kitchen/kitchen-1/ack"}, "a board read another board's acks"


def test_device_reads_its_own_config_and_ota_which_only_the_operator_writes(
    shipped: Broker, gateway: Peer, kitchen: Peer
) -> None:
    config = contract.config_topic("kitchen", "kitchen-1")
    ota = contract.ota_topic("kitchen", "kitchen-1")
    operator = Peer(shipped.port, shipped.operator, unique("op"))
    try:
        assert not operator.publish(config, b'{"rev":1}', retain=True).is_failure
        assert gateway.publish(config, b'{"rev":666}', retain=True).is_failure, "the gateway wrote a config"
        assert not refused(kitchen.subscribe(config, ota, f"{ota}/#"))
        wait_for(lambda: kitchen.messages, 5, "the retained config at the board")
        assert not operator.publish(f"{ota}/chunk", b"x").is_failure
        wait_for(lambda: len(kitchen.messages) == 2, 5, "the ota chunk at the board")
        assert kitchen.messages == [(config, b'{"rev":1}'), (f"{ota}/chunk", b"x")]
    finally:
        operator.publish(config, b"", retain=True)
        operator.close()


def test_the_tls_listener_has_the_same_accounts_and_acl(shipped: Broker, gateway: Peer) -> None:
    """Boards on the network use mqtts://…:8883: anonymous and wrong passwords are refused there too,
    and a device may publish only its own topics; the installed key is its owner's only."""
    assert (shipped.ca.parent / "server.key").stat().st_mode & 0o077 == 0
    anon = Peer(shipped.tls_port, None, ca=shipped.ca)
    anon.client.loop_stop()
    assert not anon.accepted
    wrong = Peer(shipped.tls_port, Credentials("kitchen-1", "wrong"), "kitchen-1", ca=shipped.ca)
    wrong.client.loop_stop()
    assert not wrong.accepted
    board = Peer(shipped.tls_port, shipped.boards["kitchen-1"], "kitchen-1", ca=shipped.ca)
    try:
        assert board.publish("sensors/kitchen/garage-1/reading", b"{}").is_failure
        assert not board.publish("sensors/kitchen/kitchen-1/reading", b"{}").is_failure
        wait_for(lambda: gateway.messages, 5, "the allowed reading at the gateway (on the plain listener)")
        assert [t for t, _p in gateway.messages] == ["sensors/kitchen/kitchen-1/reading"]
    finally:
        board.close()


# --- a hostile board (issue 19): every attempt refused, the good readings unaffected -------------


def test_board_may_not_join_the_gateways_shared_group(good: GoodTraffic, hostile: Peer) -> None:
    """Mosquitto hands a group member its share of the readings; one that may not read them drops them
    (after every board got its PUBACK). The gateway's group, and any group at all, is refused."""
    good.burst()
    assert refused(hostile.subscribe(f"$share/{GATEWAY_GROUP}/{contract.READING_SUBSCRIPTION}"))
    assert refused(hostile.subscribe(f"$share/{GATEWAY_GROUP}/sensors/garage/garage-1/reading"))
    assert refused(hostile.subscribe("$share/mine/sensors/garage/garage-1/ack"))  # even its own topic
    good.burst(20)
    good.all_arrived()
    assert hostile.messages == []


def test_board_may_not_take_over_the_gateways_session(shipped: Broker, good: GoodTraffic) -> None:
    good.burst()
    takeover = Peer(shipped.port, shipped.boards["garage-1"], GATEWAY_CLIENT_ID, clean_start=False)
    try:
        assert not takeover.accepted, "a board connected with the gateway's client id"
        good.burst()
        good.all_arrived()
    finally:
        takeover.close()
    other = Peer(shipped.port, shipped.boards["garage-1"], "kitchen-1")  # nor another board's
    other.client.loop_stop()
    assert not other.accepted


def test_board_may_not_read_sys(good: GoodTraffic, hostile: Peer) -> None:
    good.burst()
    assert refused(hostile.subscribe("$SYS/#"))
    assert refused(hostile.subscribe("$SYS/broker/uptime"))
    assert refused(hostile.subscribe("#"))
    good.burst()
    good.all_arrived()
    assert hostile.messages == []


def test_board_may_not_publish_as_another_board(good: GoodTraffic, hostile: Peer) -> None:
    good.burst()
    for kind in ("reading", "status", "health"):
        topic = contract.reading_topic("kitchen", "kitchen-1").replace("reading", kind)
        assert hostile.publish(topic, _json(payloads.reading("kitchen", "kitchen-1", 10_000))).is_failure
    assert hostile.publish("sensors/kitchen/garage-1/reading", b"{}").is_failure  # its id, another place
    good.burst()
    good.all_arrived()  # exactly the good ones: nothing forged was routed


def test_board_may_not_read_another_boards_ack_config_or_ota(
    shipped: Broker, good: GoodTraffic, hostile: Peer
) -> None:
    good.burst()
    for topic in (
        contract.ack_topic("kitchen", "kitchen-1"),
        contract.config_topic("kitchen", "kitchen-1"),
        contract.ota_topic("kitchen", "kitchen-1"),
        contract.ota_topic("kitchen", "kitchen-1") + "/#",
        "sensors/+/+/config",
        "sensors/#",
    ):
        assert refused(hostile.subscribe(topic)), f"garage-1 may subscribe to {topic}"
    operator = Peer(shipped.port, shipped.operator, unique("op"))
    try:
        assert not operator.publish(contract.config_topic("kitchen", "kitchen-1"), b'{"rev":2}').is_failure
    finally:
        operator.close()
    good.burst()
    good.all_arrived()
    assert hostile.messages == []


def test_only_the_gateway_account_joins_the_gateway_group(shipped: Broker) -> None:
    operator = Peer(shipped.port, shipped.operator, unique("op"))
    try:
        assert refused(operator.subscribe(f"$share/{GATEWAY_GROUP}/{contract.READING_SUBSCRIPTION}"))
        assert not refused(operator.subscribe(contract.READING_SUBSCRIPTION))  # watching is fine
    finally:
        operator.close()


def test_install_certs_names_a_missing_file_and_how_to_make_it(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(SHIPPED / "install-certs.sh")],
        env={**os.environ, "CERTS_SRC": str(tmp_path), "CERTS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "ca.crt is missing" in result.stderr
    assert "iot stack certs --dir compose/mosquitto/certs" in result.stderr


def test_dynsec_init_keeps_an_existing_accounts_file(tmp_path: Path) -> None:
    """The init step runs before every start: once the broker has its accounts (boards among them),
    a second run must not replace them, whatever .env says now."""
    file = tmp_path / "dynsec" / "dynamic-security.json"
    env = {**os.environ, "DYNSEC_FILE": str(file), "MQTT_OPERATOR_PASSWORD": "first"}
    subprocess.run(["sh", str(SHIPPED / "dynsec-init.sh")], env=env, check=True, capture_output=True)
    before = file.read_bytes()
    assert file.stat().st_mode & 0o077 == 0
    second = subprocess.run(
        ["sh", str(SHIPPED / "dynsec-init.sh")],
        env={**env, "MQTT_OPERATOR_PASSWORD": "second"},
        check=True,
        capture_output=True,
        text=True,
    )
    assert "exists" in second.stdout
    assert file.read_bytes() == before
    assert b"first" not in before and b"second" not in before  # hashed only

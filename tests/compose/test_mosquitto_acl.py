"""The shipped broker config, run on a real Mosquitto: per-device credentials and ACLs hold."""

from __future__ import annotations

import getpass
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from iot.app.stack import tls
from tests.support import free_ports, listening, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "compose" / "mosquitto"


@dataclass(frozen=True)
class Broker:
    port: int
    tls_port: int
    ca: Path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsFiles:
    """Certificates as `iot stack certs --dir compose/mosquitto/certs` makes them (once: RSA keys)."""
    return tls.ensure(tmp_path_factory.mktemp("certs-src"), ["localhost", "127.0.0.1"])


@pytest.fixture
def shipped(tmp_path: Path, made: tls.TlsFiles) -> Iterator[Broker]:
    """The shipped config and scripts on a real Mosquitto: the password file made by make-passwd.sh,
    the TLS files installed by install-certs.sh."""
    port, tls_port = free_ports(2)
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        ["sh", str(SHIPPED / "install-certs.sh")],
        env={**os.environ, "CERTS_SRC": str(made.ca.parent), "CERTS_DIR": str(certs)},
        check=True,
        capture_output=True,
    )
    passwd = tmp_path / "passwd"
    env = {
        **os.environ,
        "PASSWD_FILE": str(passwd),
        "MQTT_GATEWAY_PASSWORD": "gw-secret",
        "MQTT_HEALTHCHECK_PASSWORD": "hc-secret",
        "MQTT_DEVICES": "kitchen-1:k1-secret,garage-1:g1-secret",
    }
    subprocess.run(["sh", str(SHIPPED / "make-passwd.sh")], env=env, check=True, capture_output=True)
    conf = (SHIPPED / "mosquitto.conf").read_text()
    conf = (
        conf.replace("listener 1883", f"listener {port} 127.0.0.1")
        .replace("listener 8883", f"listener {tls_port} 127.0.0.1")
        .replace("/mosquitto/certs/", f"{certs}/")
        .replace("/mosquitto/auth/passwd", str(passwd))
        .replace("/mosquitto/config/acl", str(SHIPPED / "acl"))
        .replace("persistence true", "persistence false")
    )
    # Running as root, mosquitto would drop to its own user, which cannot read pytest's tmp folder.
    conf += f"user {getpass.getuser()}\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(port) and listening(tls_port), 10, "the private mosquitto to listen")
        yield Broker(port, tls_port, certs / "ca.crt")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def broker(shipped: Broker) -> int:
    return shipped.port


def connect(
    port: int, user: str | None, password: str | None, ca: Path | None = None
) -> tuple[mqtt.Client, ReasonCode]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    if user is not None:
        client.username_pw_set(user, password)
    result: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_for(lambda: result, 5, "CONNACK")
    return client, result[0]


def test_anonymous_and_wrong_password_are_refused(broker: int) -> None:
    anon, rc = connect(broker, None, None)
    anon.loop_stop()
    assert rc.is_failure
    bad, rc = connect(broker, "kitchen-1", "wrong")
    bad.loop_stop()
    assert rc.is_failure


def test_device_publishes_only_under_its_own_id_and_gateway_reads_all(broker: int) -> None:
    got: list[str] = []
    gateway, rc = connect(broker, "gateway", "gw-secret")
    assert not rc.is_failure
    subscribed = threading.Event()
    gateway.on_subscribe = lambda *_a: subscribed.set()
    gateway.on_message = lambda _c, _u, msg: got.append(msg.topic)
    gateway.subscribe("sensors/+/+/reading", qos=1)
    assert subscribed.wait(5)

    device, rc = connect(broker, "kitchen-1", "k1-secret")
    assert not rc.is_failure
    acks: dict[int, ReasonCode] = {}
    device.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    forbidden = device.publish("sensors/kitchen/garage-1/reading", b"{}", qos=1)
    allowed = device.publish("sensors/kitchen/kitchen-1/reading", b"{}", qos=1)
    wait_for(lambda: "sensors/kitchen/kitchen-1/reading" in got, 5, "the allowed reading at the gateway")
    wait_for(lambda: forbidden.mid in acks and allowed.mid in acks, 5, "both PUBACKs")
    assert acks[forbidden.mid].is_failure, "publishing as another device must be refused"
    assert not acks[allowed.mid].is_failure
    # Same connection, QoS 1, in order: had the forbidden one been routed it would have arrived first.
    assert got == ["sensors/kitchen/kitchen-1/reading"]
    for client in (device, gateway):
        client.disconnect()
        client.loop_stop()


def test_device_reads_only_its_own_acks_which_only_the_gateway_writes(broker: int) -> None:
    """End-to-end acks (docs/CONTRACT.md): the gateway publishes sensors/{place}/{device}/ack; a board
    receives its own and nobody else's, even through a wildcard, and cannot forge one."""
    kitchen, rc = connect(broker, "kitchen-1", "k1-secret")
    assert not rc.is_failure
    got: list[tuple[str, bytes]] = []
    granted: list[list[ReasonCode]] = []
    kitchen.on_message = lambda _c, _u, msg: got.append((msg.topic, bytes(msg.payload)))
    kitchen.on_subscribe = lambda _c, _u, _mid, reasons, _p: granted.append(list(reasons))
    kitchen.subscribe([("sensors/kitchen/kitchen-1/ack", 0), ("sensors/+/+/ack", 0)])
    wait_for(lambda: granted, 5, "SUBACK")

    gateway, rc = connect(broker, "gateway", "gw-secret")
    assert not rc.is_failure
    published: dict[int, ReasonCode] = {}
    gateway.on_publish = lambda _c, _u, mid, reason, _p: published.__setitem__(mid, reason)
    other = gateway.publish("sensors/kitchen/garage-1/ack", b'{"boot":0,"ranges":[[0,9]]}', qos=1)
    own = gateway.publish("sensors/kitchen/kitchen-1/ack", b'{"boot":0,"ranges":[[0,4]]}', qos=1)
    wait_for(lambda: other.mid in published and own.mid in published, 5, "the gateway's PUBACKs")
    assert not published[own.mid].is_failure and not published[other.mid].is_failure
    # The device may not write acks, not even its own (a forged ack would release unsaved readings).
    forged_acks: dict[int, ReasonCode] = {}
    kitchen.on_publish = lambda _c, _u, mid, reason, _p: forged_acks.__setitem__(mid, reason)
    forged = kitchen.publish("sensors/kitchen/kitchen-1/ack", b'{"boot":0,"ranges":[[0,99]]}', qos=1)
    wait_for(lambda: forged.mid in forged_acks, 5, "the forged ack's PUBACK")
    assert forged_acks[forged.mid].is_failure
    marker = gateway.publish("sensors/kitchen/kitchen-1/ack", b'{"boot":0,"ranges":[[5,5]]}', qos=1)
    wait_for(lambda: marker.mid in published, 5, "the marker's PUBACK")
    # Same gateway connection, in order: once the last one arrived, anything routed earlier has too.
    wait_for(lambda: any(p.endswith(b"[[5,5]]}") for _t, p in got), 5, "the marker ack at the device")
    topics = {t for t, _p in got}
    assert topics == {"sensors/kitchen/kitchen-1/ack"}, f"a board read another board's acks: {topics}"
    assert b'{"boot":0,"ranges":[[0,99]]}' not in {p for _t, p in got}, "a forged ack was routed"
    for client in (kitchen, gateway):
        client.disconnect()
        client.loop_stop()


def test_the_tls_listener_has_the_same_credentials_and_acl(shipped: Broker) -> None:
    """Boards on the network use mqtts://…:8883: anonymous and wrong passwords are refused there too,
    and a device may publish only under its own id; the installed key is its owner's only."""
    assert (shipped.ca.parent / "server.key").stat().st_mode & 0o077 == 0
    anon, rc = connect(shipped.tls_port, None, None, shipped.ca)
    anon.loop_stop()
    assert rc.is_failure
    bad, rc = connect(shipped.tls_port, "kitchen-1", "wrong", shipped.ca)
    bad.loop_stop()
    assert rc.is_failure
    got: list[str] = []
    gateway, rc = connect(shipped.port, "gateway", "gw-secret")
    assert not rc.is_failure
    subscribed = threading.Event()
    gateway.on_subscribe = lambda *_a: subscribed.set()
    gateway.on_message = lambda _c, _u, msg: got.append(msg.topic)
    gateway.subscribe("sensors/+/+/reading", qos=1)
    assert subscribed.wait(5)
    device, rc = connect(shipped.tls_port, "kitchen-1", "k1-secret", shipped.ca)
    assert not rc.is_failure
    acks: dict[int, ReasonCode] = {}
    device.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    forbidden = device.publish("sensors/kitchen/garage-1/reading", b"{}", qos=1)
    allowed = device.publish("sensors/kitchen/kitchen-1/reading", b"{}", qos=1)
    wait_for(lambda: forbidden.mid in acks and allowed.mid in acks, 5, "both PUBACKs over TLS")
    assert acks[forbidden.mid].is_failure and not acks[allowed.mid].is_failure
    wait_for(lambda: got, 5, "the allowed reading at the gateway (on the plain listener)")
    assert got == ["sensors/kitchen/kitchen-1/reading"]
    for client in (device, gateway):
        client.disconnect()
        client.loop_stop()


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

"""`iot devices add | list | show | remove` on a real broker with accounts and the stack's MongoDB."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hil.flash import load_board_config
from iot import contract
from iot.broker import accounts
from iot.broker.credentials import Credentials
from iot.broker.dynsec import Dynsec
from iot.broker.errors import BrokerError
from iot.env import parse_mqtt_url
from iot.harness.broker import PrivateBroker
from iot.harness.ports import free_ports
from tests.devices.conftest import Registry
from tests.peer import Peer
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration
IOT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "iot"


def iot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IOT), *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def board_session(broker: PrivateBroker, device: str, password: str) -> Peer:
    """A board's MQTT session as the firmware opens it: MQTT 3.1.1, client id = device id."""
    return Peer(broker.port, Credentials(device, password), device, protocol=mqtt.MQTTv311)


def added(env: dict[str, str], device: str, place: str, out: Path) -> dict[str, str]:
    result = iot(env, "devices", "add", device, "--place", place, "--out", str(out))
    assert result.returncode == 0, result.stderr
    config: dict[str, str] = json.loads((out / f"{device}.json").read_text())
    return config


def test_add_writes_a_config_the_board_connects_with_and_records_it(
    devices_env: dict[str, str], broker: PrivateBroker, registry: Registry, tmp_path: Path
) -> None:
    device = unique("kitchen")
    result = iot(
        devices_env, "devices", "add", device, "--place", "kitchen", "--out", str(tmp_path / "boards")
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "boards" / f"{device}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    config = json.loads(path.read_text())
    assert config == {
        "device": device,
        "place": "kitchen",
        "broker": broker.url,
        "mqtt_user": device,
        "mqtt_password": config["mqtt_password"],
    }
    assert len(config["mqtt_password"]) >= 32
    assert result.stdout.count(config["mqtt_password"]) == 1, "the password is shown once"
    assert config["mqtt_password"] not in result.stderr
    # Stored only hashed by the broker.
    assert config["mqtt_password"] not in (broker.folder / "dynamic-security.json").read_text()
    # The firmware's own checker takes it as it is (`iot flash` runs it).
    assert load_board_config(path)["mqtt_user"] == device

    board = board_session(broker, device, config["mqtt_password"])
    try:
        assert board.accepted
        info = board.client.publish(contract.reading_topic("kitchen", device), b"{}", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        board.close()
    doc = registry.doc(device)
    assert doc is not None
    assert doc["place"] == "kitchen" and doc["online"] is False and doc["last_seen"] is None
    assert doc["created_at"] is not None

    listed = iot(devices_env, "devices", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["device"] == device]
    assert row["place"] == "kitchen" and row["problem"] is None
    shown = iot(devices_env, "devices", "show", device)
    assert shown.returncode == 0, shown.stderr
    topics = {line.split()[-1] for line in shown.stdout.splitlines() if line.startswith("acl")}
    assert topics == {
        *(
            f"sensors/kitchen/{device}/{kind}"
            for kind in ("reading", "status", "health", "ack", "config", "ota")
        ),
        f"sensors/kitchen/{device}/ota/#",
        "#",  # the deny of everything else it might receive
    }
    assert config["mqtt_password"] not in shown.stdout + listed.stdout


def test_add_refuses_an_existing_board_and_replace_locks_out_the_old_password(
    devices_env: dict[str, str], broker: PrivateBroker, registry: Registry, tmp_path: Path
) -> None:
    device = unique("mover")
    old = added(devices_env, device, "kitchen", tmp_path)
    again = iot(devices_env, "devices", "add", device, "--place", "kitchen")
    assert again.returncode == 1
    assert "exists" in again.stderr and "--replace" in again.stderr
    board = board_session(broker, device, old["mqtt_password"])
    try:
        assert board.accepted
        moved = iot(
            devices_env, "devices", "add", device, "--place", "garage", "--replace", "--out", str(tmp_path)
        )
        assert moved.returncode == 0, moved.stderr
        wait_for(lambda: board.disconnected_at, 5, "the board on the old password to be disconnected")
    finally:
        board.close()
    new = json.loads((tmp_path / f"{device}.json").read_text())
    assert new["place"] == "garage" and new["mqtt_password"] != old["mqtt_password"]
    stale = board_session(broker, device, old["mqtt_password"])
    stale.close()
    assert not stale.accepted
    fresh = board_session(broker, device, new["mqtt_password"])
    fresh.close()
    assert fresh.accepted
    assert (registry.doc(device) or {}).get("place") == "garage"


def test_remove_cuts_off_a_connected_board_at_once_and_for_good(
    devices_env: dict[str, str], broker: PrivateBroker, registry: Registry, tmp_path: Path
) -> None:
    device = unique("gone")
    config = added(devices_env, device, "attic", tmp_path)
    board = board_session(broker, device, config["mqtt_password"])
    try:
        board.publish(contract.status_topic("attic", device), b"online", retain=True)
        started = time.monotonic()
        removed = iot(devices_env, "devices", "remove", device)
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: board.disconnected_at, 5, "the broker to drop the removed board")
        took = board.disconnected_at[0] - started
        print(f"\nremove -> disconnected in {took:.2f}s (the command's own start included)")
    finally:
        board.close()
    again = board_session(broker, device, config["mqtt_password"])
    again.close()
    assert not again.accepted, "a removed board logged in again"
    assert registry.doc(device) is None
    listed = iot(devices_env, "devices", "list", "--json")
    assert device not in {r["device"] for r in json.loads(listed.stdout)}
    # Its retained status is gone too: the kick skips the last will, so "online" would stay forever.
    with Dynsec(parse_mqtt_url(broker.url), broker.operator) as dynsec:
        assert accounts.device_account(dynsec, device) is None
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.username_pw_set(broker.operator.username, broker.operator.password)
    got: list[bytes] = []
    subscribed: list[int] = []
    watcher.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    watcher.on_subscribe = lambda *_a: subscribed.append(1)
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    try:
        watcher.subscribe(contract.status_topic("attic", device), 1)
        wait_for(lambda: subscribed, 5, "SUBACK")
        # A retained message is sent before the SUBACK's callback returns; one more round trip to be sure.
        watcher.publish("sensors/attic/x/none", b"", qos=1).wait_for_publish(5)
        assert got == []
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert iot(devices_env, "devices", "remove", device).returncode == 1  # nothing left to remove


def test_reserved_and_malformed_ids_are_refused(devices_env: dict[str, str], broker: PrivateBroker) -> None:
    refused = [
        "operator",
        "gateway",
        "iot-gateway-1",
        "iot-anything",
        "a b",
        "a/b",
        "x+",
        "x#",
        "good-1\n",
        "",
    ]
    for device in refused:
        with pytest.raises(BrokerError):
            accounts.check_device_id(device, "kitchen")
    result = iot(devices_env, "devices", "add", "iot-gateway-1", "--place", "kitchen")
    assert result.returncode == 1
    assert "reserved" in result.stderr
    with Dynsec(parse_mqtt_url(broker.url), broker.operator) as dynsec:
        assert dynsec.get_client("iot-gateway-1") is None
        assert dynsec.get_role(accounts.device_role("iot-gateway-1")) is None


def test_an_unreachable_registry_changes_nothing_on_the_broker(
    devices_env: dict[str, str], broker: PrivateBroker
) -> None:
    (dead,) = free_ports(1)
    device = unique("orphan")
    result = iot(
        {**devices_env, "IOT_MONGO_URI": f"mongodb://127.0.0.1:{dead}/iot"},
        "devices",
        "add",
        device,
        "--place",
        "p",
    )
    assert result.returncode == 1
    assert "RegistryError" in result.stderr
    with Dynsec(parse_mqtt_url(broker.url), broker.operator) as dynsec:
        assert dynsec.get_client(device) is None


def test_without_operator_credentials_the_error_says_where_they_come_from(
    devices_env: dict[str, str],
) -> None:
    env = {k: v for k, v in devices_env.items() if not k.startswith("IOT_MQTT_OPERATOR")}
    result = iot(env, "devices", "list")
    assert result.returncode == 1
    assert "IOT_MQTT_OPERATOR_USERNAME" in result.stderr and "iot stack up" in result.stderr
    wrong = iot({**devices_env, "IOT_MQTT_OPERATOR_PASSWORD": "not-it"}, "devices", "list")
    assert wrong.returncode == 1
    assert "refused the login as 'operator'" in wrong.stderr
    assert "not-it" not in wrong.stderr

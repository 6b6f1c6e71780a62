"""The gateway against a broker that demands TLS and a username/password, as the shipped compose
config does: credentials and CA come from the environment, and a refused login never crashes it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iot import contract
from iot.app.stack import tls
from iot.harness.mqtt import MqttLogin
from iot.harness.ports import HOST
from tests.gateway.conftest import GatewayFactory, KafkaReader, PrivateBroker, Publisher, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "gateway", "gw-pass-Zq81"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    pki = tmp_path / "pki"
    # The stack's own certificate maker: a CA and a server certificate for the loopback address.
    files = tls.ensure(pki, [HOST])
    passwords = pki / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), USER, PASSWORD], check=True, timeout=30)
    broker = PrivateBroker(
        tmp_path / "mosquitto",
        listener_conf=(
            f"allow_anonymous false\npassword_file {passwords}\ncafile {files.ca}\n"
            f"certfile {files.cert}\nkeyfile {files.key}\n"
        ),
        tls=True,
    )
    broker.start()
    yield broker
    broker.kill()


def test_gateway_bridges_over_tls_with_username_and_password(
    gateways: GatewayFactory, tls_broker: PrivateBroker, kafka_readers: Callable[..., KafkaReader]
) -> None:
    ca = tls_broker.folder.parent / "pki" / "ca.crt"
    device = unique("dev")
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    gateway = gateways(
        IOT_MQTT_URL=tls_broker.url,
        IOT_MQTT_TLS_CA=str(ca),
        IOT_MQTT_USERNAME=USER,
        IOT_MQTT_PASSWORD=PASSWORD,
    )
    publisher = Publisher(MqttLogin(tls_broker.url, USER, PASSWORD, str(ca)))
    publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(20))
    publisher.close()
    reader.wait_until(lambda rs: len(rs) == 20, 30, "20 readings bridged over TLS")
    assert PASSWORD not in gateway.log()


def test_refused_login_is_logged_and_retried_without_crashing(
    gateways: GatewayFactory, tls_broker: PrivateBroker
) -> None:
    ca = tls_broker.folder.parent / "pki" / "ca.crt"
    gateway = gateways(
        start=False,
        IOT_MQTT_URL=tls_broker.url,
        IOT_MQTT_TLS_CA=str(ca),
        IOT_MQTT_USERNAME=USER,
        IOT_MQTT_PASSWORD="wrong-password-7731",
    )
    gateway.start(wait_ready=False)
    wait_for(lambda: "mqtt_connect_refused" in gateway.log(), 30, "the refused login to be logged")
    assert gateway.proc is not None and gateway.proc.poll() is None, "the gateway exited on a refused login"
    assert gateway.metric("iot_gateway_mqtt_connected") == 0.0
    assert "wrong-password-7731" not in gateway.log()

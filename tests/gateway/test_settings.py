"""Settings from the environment: defaults, validation naming the variable, secrets never shown."""

from __future__ import annotations

import pytest

from gateway.errors import SettingsError
from gateway.settings import GatewaySettings, Secret

pytestmark = pytest.mark.unit


def test_defaults_follow_the_contract() -> None:
    s = GatewaySettings.from_env({"IOT_GATEWAY_CLIENT_ID": "gw-1"})
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_tls) == ("127.0.0.1", 1883, False)
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.metrics_port == 9108
    assert s.subscription == "$share/iot-gateway/sensors/+/+/reading"


def test_producer_is_idempotent_acks_all_and_compressed() -> None:
    config = GatewaySettings.from_env({}).kafka_config()
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["compression.type"] == "lz4"


def test_default_client_id_is_stable_across_restarts() -> None:
    assert GatewaySettings.from_env({}).client_id == GatewaySettings.from_env({}).client_id


def test_mqtts_url_enables_tls_on_port_8883() -> None:
    s = GatewaySettings.from_env({"IOT_MQTT_URL": "mqtts://broker.local"})
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_tls) == ("broker.local", 8883, True)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IOT_GATEWAY_MAX_IN_FLIGHT", "0"),
        ("IOT_GATEWAY_MAX_IN_FLIGHT", "70000"),
        ("IOT_GATEWAY_MAX_IN_FLIGHT", "many"),
        ("IOT_GATEWAY_METRICS_PORT", "-1"),
        ("IOT_GATEWAY_GROUP", "a/b"),
        ("IOT_GATEWAY_KAFKA_COMPRESSION", "brotli"),
        ("IOT_KAFKA_SECURITY_PROTOCOL", "tls"),
        ("IOT_MQTT_TLS_CA", "/nonexistent/ca.pem"),
        ("IOT_KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
        ("IOT_MQTT_URL", "http://127.0.0.1:1883"),
        ("IOT_MQTT_URL", "mqtt://127.0.0.1:99999"),
    ],
)
def test_invalid_value_raises_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        GatewaySettings.from_env({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_credentials_in_the_mqtt_url_are_refused() -> None:
    with pytest.raises(SettingsError, match="IOT_MQTT_USERNAME"):
        GatewaySettings.from_env({"IOT_MQTT_URL": "mqtt://user:pw@127.0.0.1"})


def test_password_without_username_names_the_username_variable() -> None:
    with pytest.raises(SettingsError) as info:
        GatewaySettings.from_env({"IOT_MQTT_PASSWORD": "pw"})
    assert info.value.variable == "IOT_MQTT_USERNAME"


def test_secrets_are_masked_in_description_and_repr() -> None:
    s = GatewaySettings.from_env(
        {
            "IOT_MQTT_USERNAME": "gw",
            "IOT_MQTT_PASSWORD": "hunter2-mqtt",
            "IOT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "IOT_KAFKA_SASL_MECHANISM": "PLAIN",
            "IOT_KAFKA_SASL_USERNAME": "gw",
            "IOT_KAFKA_SASL_PASSWORD": "hunter2-kafka",
        }
    )
    shown = f"{s!r} {s.describe()}"
    assert "hunter2" not in shown
    assert s.mqtt_password == Secret("hunter2-mqtt")


def test_kafka_security_settings_pass_through_to_the_producer() -> None:
    config = GatewaySettings.from_env(
        {
            "IOT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "IOT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "IOT_KAFKA_SASL_USERNAME": "gw",
            "IOT_KAFKA_SASL_PASSWORD": "pw",
        }
    ).kafka_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "gw"
    assert config["sasl.password"] == "pw"

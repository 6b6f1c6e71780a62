"""One Kafka connection config: read and checked once, the same settings for every client library."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.kafka_auth import faust_broker, faust_credentials
from iot.app.stack import tls
from iot.errors import ConfigError
from iot.kafka import KafkaConnection, classify_auth

pytestmark = pytest.mark.unit

SASL_SSL = {
    "IOT_KAFKA_BOOTSTRAP": "k1:9094,k2:9094",
    "IOT_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "IOT_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "IOT_KAFKA_SASL_USERNAME": "gw",
    "IOT_KAFKA_SASL_PASSWORD": "hunter2",
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tls.ensure(tmp_path_factory.mktemp("kafka-tls"), ["localhost"]).ca


def test_plaintext_by_default_with_the_contract_bootstrap() -> None:
    conn = KafkaConnection.from_env({})
    assert conn.librdkafka() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert faust_credentials(conn) is None
    assert faust_broker(conn) == "kafka://127.0.0.1:9092"


def test_sasl_ssl_is_the_same_settings_for_librdkafka_and_faust(ca: Path) -> None:
    conn = KafkaConnection.from_env({**SASL_SSL, "IOT_KAFKA_SSL_CA_LOCATION": str(ca)})
    assert conn.librdkafka() == {
        "bootstrap.servers": "k1:9094,k2:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "gw",
        "sasl.password": "hunter2",
        "ssl.ca.location": str(ca),
    }
    creds = faust_credentials(conn)
    assert creds is not None
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")  # type: ignore[attr-defined]
    assert (creds.username, creds.password) == ("gw", "hunter2")  # type: ignore[attr-defined]
    assert faust_broker(conn) == "kafka://k1:9094;k2:9094"


def test_a_child_process_gets_the_same_connection_from_its_environment(ca: Path) -> None:
    conn = KafkaConnection.from_env({**SASL_SSL, "IOT_KAFKA_SSL_CA_LOCATION": str(ca)})
    assert KafkaConnection.from_env(conn.env()) == conn


def test_secrets_stay_out_of_its_description() -> None:
    conn = KafkaConnection.from_env({**SASL_SSL, "IOT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert "hunter2" not in f"{conn.describe()} {conn!r}"
    assert conn.describe() == "SASL_PLAINTEXT k1:9094,k2:9094 SCRAM-SHA-512 user=gw"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"IOT_KAFKA_SASL_MECHANISM": "NOPE"}, "IOT_KAFKA_SASL_MECHANISM"),
        ({**SASL_SSL, "IOT_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "IOT_KAFKA_SASL_MECHANISM"),
        ({**SASL_SSL, "IOT_KAFKA_SASL_PASSWORD": ""}, "IOT_KAFKA_SASL_PASSWORD"),
        ({"IOT_KAFKA_SASL_USERNAME": "gw"}, "IOT_KAFKA_SECURITY_PROTOCOL"),
        ({"IOT_KAFKA_SECURITY_PROTOCOL": "TLS"}, "IOT_KAFKA_SECURITY_PROTOCOL"),
        ({"IOT_KAFKA_BOOTSTRAP": "k1"}, "IOT_KAFKA_BOOTSTRAP"),
        ({"IOT_KAFKA_BOOTSTRAP": "k1:9092,k2:x"}, "IOT_KAFKA_BOOTSTRAP"),
    ],
)
def test_a_bad_combination_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaConnection.from_env(env)
    assert info.value.field == named


def test_tls_files_without_a_tls_protocol_are_refused(ca: Path) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaConnection.from_env({"IOT_KAFKA_SSL_CA_LOCATION": str(ca)})
    assert info.value.field == "IOT_KAFKA_SECURITY_PROTOCOL"


def test_a_refused_login_and_an_unverified_broker_name_their_variables() -> None:
    conn = KafkaConnection.from_env(SASL_SSL)
    refused = classify_auth(
        conn, -169, "SASL authentication error: Authentication failed: invalid credentials"
    )
    assert refused is not None and refused.field == "IOT_KAFKA_SASL_PASSWORD"
    assert "hunter2" not in str(refused) and "IOT_KAFKA_SASL_USERNAME=gw" in str(refused)
    unverified = classify_auth(conn, -169, "SSL handshake failed: certificate verify failed")
    assert unverified is not None and unverified.field == "IOT_KAFKA_SSL_CA_LOCATION"
    plain = classify_auth(conn, -181, "SSL handshake failed: connecting to a PLAINTEXT broker listener?")
    assert plain is not None and plain.field == "IOT_KAFKA_SECURITY_PROTOCOL"
    assert classify_auth(conn, -195, "Connect to ipv4#127.0.0.1:9094 failed: Connection refused") is None

"""The native broker's TLS listener: certificates made once and renewed only when needed, `up` adding
the listener to a broker started without it, and `status` checking it with a real handshake."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iot.app.cli import main
from iot.app.stack import probes, tls
from iot.app.stack.config import ConfigError, StackConfig
from iot.app.stack.manager import Stack
from iot.harness.ports import free_ports

HOSTS = ["localhost", "127.0.0.1"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.unit
def test_certificates_are_made_once_then_reused_as_they_are(tmp_path: Path) -> None:
    made = tls.ensure(tmp_path, HOSTS)
    assert tls.san_hosts(made.cert) == set(HOSTS)
    _openssl("verify", "-CAfile", str(made.ca), str(made.cert), cwd=tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0 and made.key.stat().st_mode & 0o077 == 0
    before = _files(tmp_path)
    assert tls.ensure(tmp_path, list(reversed(HOSTS))) == made
    assert _files(tmp_path) == before, "valid certificates for the same hosts must be reused"


@pytest.mark.unit
def test_server_certificate_is_issued_again_by_the_same_ca_for_new_hosts_or_near_expiry(
    tmp_path: Path,
) -> None:
    made = tls.ensure(tmp_path, HOSTS)
    ca = made.ca.read_bytes()
    first = made.cert.read_bytes()
    tls.ensure(tmp_path, [*HOSTS, "gateway.lan", "192.168.1.20", "::1"])
    assert made.cert.read_bytes() != first and made.ca.read_bytes() == ca
    assert tls.san_hosts(made.cert) == {*HOSTS, "gateway.lan", "192.168.1.20", "::1"}
    # The same names again (an IPv6 address as openssl does not print it): kept as it is.
    renewed = made.cert.read_bytes()
    tls.ensure(tmp_path, [*HOSTS, "Gateway.lan", "192.168.1.20", "0:0:0:0:0:0:0:1"])
    assert made.cert.read_bytes() == renewed
    # A server certificate of the same CA that expires tomorrow: renewed, the CA kept (boards keep it).
    _openssl("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "s.csr", cwd=tmp_path)
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "s.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "7", "-days", "1",
        "-extfile", "ext", "-out", "server.crt", cwd=tmp_path,
    )  # fmt: skip
    tls.ensure(tmp_path, HOSTS)
    assert made.ca.read_bytes() == ca
    assert (tls.expiry(made.cert) - datetime.now(UTC)).days > tls.RENEW_BEFORE_DAYS


@pytest.mark.unit
def test_an_expiring_ca_is_made_again_and_the_server_certificate_with_it(tmp_path: Path) -> None:
    made = tls.ensure(tmp_path, HOSTS)
    _openssl("req", "-x509", "-key", "ca.key", "-subj", "/CN=old", "-days", "1", "-out", "ca.crt",
             cwd=tmp_path)  # fmt: skip
    old_ca, old_cert = made.ca.read_bytes(), made.cert.read_bytes()
    tls.ensure(tmp_path, HOSTS)
    assert made.ca.read_bytes() != old_ca and made.cert.read_bytes() != old_cert
    _openssl("verify", "-CAfile", str(made.ca), str(made.cert), cwd=tmp_path)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"IOT_MQTT_TLS_PORT": "eighty"}, "IOT_MQTT_TLS_PORT"),
        ({"IOT_MQTT_TLS_PORT": "70000"}, "IOT_MQTT_TLS_PORT"),
        ({"IOT_MQTT_TLS_PORT": "1883"}, "IOT_MQTT_TLS_PORT"),
        ({"IOT_MQTT_TLS_HOSTS": "gateway.lan,bad host"}, "IOT_MQTT_TLS_HOSTS"),
    ],
)
def test_bad_tls_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        StackConfig.from_env(env)
    assert info.value.field == field


@pytest.mark.unit
def test_tls_port_is_8883_beside_1883_and_follows_any_other_mqtt_port() -> None:
    assert StackConfig.from_env({}).mqtt_tls_port == 8883
    assert StackConfig.from_env({"IOT_MQTT_URL": "mqtt://127.0.0.1:4000"}).mqtt_tls_port == 4001
    assert StackConfig.from_env({"IOT_MQTT_TLS_PORT": "0"}).mqtt_tls_port == 0
    hosts = StackConfig.from_env({"IOT_MQTT_TLS_HOSTS": "gateway.lan, 10.0.0.5"}).tls_hosts
    assert hosts == ("localhost", "127.0.0.1", "gateway.lan", "10.0.0.5")


@pytest.fixture
def private_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    plain, secure = free_ports(2)
    env = {
        "IOT_STACK_DIR": str(tmp_path / "stack"),
        "IOT_MQTT_URL": f"mqtt://127.0.0.1:{plain}",
        "IOT_MQTT_TLS_PORT": str(secure),
        "IOT_CACHE_DIR": os.environ.get("IOT_CACHE_DIR", ""),
    }
    yield env
    Stack(StackConfig.from_env(env)).down(["mosquitto"])


@pytest.mark.integration
def test_up_adds_the_tls_listener_to_a_broker_started_without_it_and_status_checks_a_handshake(
    private_env: dict[str, str], tmp_path: Path
) -> None:
    old = Stack(StackConfig.from_env({**private_env, "IOT_MQTT_TLS_PORT": "0"}))
    (row,) = old.up(["mosquitto"])  # a broker as an `iot stack up` before the TLS listener started it
    assert row.healthy and row.name == "mosquitto"
    stack = Stack(StackConfig.from_env(private_env))
    cfg = stack.cfg
    plain, secure = stack.status(["mosquitto"])
    assert plain.healthy and not secure.healthy and secure.name == "mosquitto-tls"
    assert "iot stack up" in secure.detail, secure.detail

    plain, secure = stack.up(["mosquitto"])
    assert plain.healthy and secure.healthy, secure.detail
    assert plain.pid != row.pid, "the broker must have been restarted to gain its TLS listener"
    assert secure.port == cfg.mqtt_tls_port and "valid until" in secure.detail
    assert cfg.mqtt_tls_ca == Path(private_env["IOT_STACK_DIR"]) / "tls" / "ca.crt"

    again, _ = stack.up(["mosquitto"])
    assert again.pid == plain.pid, "an up on a broker that matches its configuration must not restart it"
    # The handshake is verified: a CA that did not sign the broker's certificate is refused.
    other = tls.ensure(tmp_path / "other", HOSTS)
    with pytest.raises(probes.ProbeFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        probes.mqtt_round_trip(cfg.host, cfg.mqtt_tls_port, tls_ca=other.ca)


@pytest.mark.unit
def test_iot_stack_certs_makes_files_for_the_compose_broker_and_names_a_bad_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stack", "certs", "--dir", str(tmp_path), "--hosts", "mqtt.example.org,10.0.0.5"]) == 0
    assert {"mqtt.example.org", "10.0.0.5", "localhost"} <= tls.san_hosts(tmp_path / "server.crt")
    assert f"CA {tmp_path / 'ca.crt'}" in capsys.readouterr().out
    assert main(["stack", "certs", "--dir", str(tmp_path), "--hosts", "no such host"]) == 1
    assert "ConfigError: --hosts: 'no such host' is not a host name" in capsys.readouterr().err

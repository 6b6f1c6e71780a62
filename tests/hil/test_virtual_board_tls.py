"""Virtual boards over real TLS (the unix port's mbedTLS) against a private TLS Mosquitto."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.probe import Probe
from tests.brokers import PrivateBroker
from tests.hil.conftest import (
    BoardFactory,
    health_of,
    seqs_of,
)
from tests.support import free_ports, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[PrivateBroker, Path, str]]:
    """A private Mosquitto with a TLS listener (certificate for `localhost`, signed by a CA made
    here) and a plain one on another port for the probe: (broker, CA file, plain URL)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=iot-vboard-test-ca", cwd=pki)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=pki)
    (pki / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=pki)
    (plain,) = free_ports(1)
    broker = PrivateBroker(
        tmp_path / "mosquitto",
        listener_conf=(
            f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
            f"allow_anonymous true\nlistener {plain} 127.0.0.1\n"
        ),
        tls=True,
        persistent=False,
    )
    with broker:
        yield broker, pki / "ca.pem", f"mqtt://127.0.0.1:{plain}"


def _tls_board(make_board: BoardFactory, tls: tuple[PrivateBroker, Path, str], **config: Any) -> Any:
    broker, ca, _plain = tls
    cfg: dict[str, Any] = {"broker": f"mqtts://localhost:{broker.port}", "tls_ca_file": "ca.pem"}
    cfg.update(config)
    board = make_board(**cfg)
    board.write_files()
    (board.flash / "ca.pem").write_bytes(ca.read_bytes())
    return board


def test_healthy_board_over_tls_keeps_one_connection_for_10_virtual_minutes(
    make_board: BoardFactory, tls_broker: tuple[PrivateBroker, Path, str]
) -> None:
    """Real TLS (the unix port's mbedTLS, certificate verified against the CA on the board's flash):
    the stream has no settimeout, as on the port before 1.24, reads time out with 116, writes are
    short. Clock at 20x: 10 virtual minutes in about 30 s."""
    _broker, _ca, plain = tls_broker
    board = _tls_board(
        make_board,
        tls_broker,
        interval_s=10,
        keepalive_s=5,
        health_every_s=60,
        # Timeouts shrink with the clock: a 1 s PUBACK wait would be 50 ms of a loaded machine.
        puback_timeout_s=20,
        watchdog_s=120,
        spec={"clock_speed": 20},
    )
    with Probe(plain, [f"sensors/+/{board.device}/#"]) as probe:
        board.start()
        wait_for(
            lambda: [h for h in health_of(probe, board.device) if h["uptime_s"] >= 600], 90, "10 minutes"
        )
        assert all(h["reconnects"] == 0 for h in health_of(probe, board.device))
        assert [m.payload for m in probe.messages("status", board.device)] == [b"online"]
        seqs = seqs_of(probe.readings(board.device))
        assert len(seqs) >= 55 and seqs == list(range(len(seqs)))
    console = board.console()
    assert "link_down" not in console and "link_connect_failed" not in console


def test_tls_waits_for_ntp_and_a_bad_ca_fails_the_connect_not_the_board(
    make_board: BoardFactory, tls_broker: tuple[PrivateBroker, Path, str]
) -> None:
    unsynced = _tls_board(make_board, tls_broker, spec={"time_sync": False})
    unsynced.start()
    unsynced.wait_console("link_waiting_for_ntp", 20)
    bad = _tls_board(make_board, tls_broker)
    bogus = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    (bad.flash / "ca.pem").write_text(bogus)
    bad.start()
    wait_for(lambda: bad.console().count("link_connect_failed") >= 2, 20, "connects failing with a bad CA")
    assert unsynced.running and bad.running
    assert "Traceback" not in unsynced.console() + bad.console()
    assert "link_up" not in unsynced.console() + bad.console()


def test_tls_without_a_ca_file_halts_at_boot_naming_the_field(make_board: BoardFactory) -> None:
    board = make_board(broker="mqtts://localhost:8883")
    board.start()
    assert board.wait(20) == 2
    assert "field=tls_ca_file" in board.console()

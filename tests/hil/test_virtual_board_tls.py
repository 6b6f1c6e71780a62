"""Virtual boards over TLS to the native stack's own TLS listener (`iot stack up`, IOT_MQTT_TLS_PORT),
verifying the broker with the CA the stack generated (`<stack>/tls/ca.crt`), as a real board would
with that file in its flash. Real TLS: the unix port's mbedTLS. (These ran against a private TLS
Mosquitto with certificates made by the test; now they prove the stack's own listener and CA.)"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import fleet
from hil.board_flash import ImageFlash
from hil.netfault import StallProxy
from hil.probe import Probe, clear_retained
from iot import contract
from iot.app.stack import probes, tls
from iot.app.stack.config import StackConfig
from iot.app.stack.manager import Stack
from iot.harness.children import Child
from iot.harness.ports import free_ports
from tests.accounts import login, remove_boards
from tests.gateway.conftest import GatewayFactory, KafkaReader
from tests.hil.conftest import BoardFactory, health_of, rides_out_a_stall, seqs_of
from tests.support import unique, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """The stack the tests run on (IOT_STACK_DIR, IOT_MQTT_URL, IOT_MQTT_TLS_PORT), its TLS listener
    answering a verified handshake and an MQTT round trip.

    A shared stack whose Mosquitto an older `iot stack up` started has no TLS listener until the next
    `iot stack up` restarts it (tests must not restart a shared service): then these tests run on the
    same stack broker (`iot stack up mosquitto`: its config, listener and CA) brought up privately on
    free ports, and say so."""
    cfg = StackConfig.from_env()
    if not cfg.mqtt_tls_port:
        pytest.fail("IOT_MQTT_TLS_PORT is 0: the stack has no TLS listener to test against")
    try:
        probes.mqtt_round_trip(cfg.host, cfg.mqtt_tls_port, tls_ca=cfg.mqtt_tls_ca, login=login())
    except probes.ProbeFailed as exc:
        print(f"\nthe stack's TLS listener {cfg.mqtt_tls_url} does not answer: {exc}")
    else:
        yield cfg
        return
    plain, secure = free_ports(2)
    own = StackConfig.from_env(
        {
            **os.environ,
            "IOT_STACK_DIR": str(tmp_path_factory.mktemp("stack")),
            "IOT_MQTT_URL": f"mqtt://127.0.0.1:{plain}",
            "IOT_MQTT_TLS_PORT": str(secure),
            "IOT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
        }
    )
    private = Stack(own)
    private.up(["mosquitto"])
    print(f"meanwhile: the stack's Mosquitto on its own, TLS on {own.mqtt_tls_url}")
    try:
        yield own
    finally:
        private.down(["mosquitto"])


def _tls_board(make_board: BoardFactory, stack: StackConfig, **config: Any) -> Any:
    """A board on the TLS listener by name (`localhost` is in the certificate), the stack's CA on its
    flash as `ca.pem`."""
    cfg: dict[str, Any] = {"broker": f"mqtts://localhost:{stack.mqtt_tls_port}", "tls_ca_file": "ca.pem"}
    cfg.update(config)
    board = make_board(**cfg)
    board.flash.write("ca.pem", stack.mqtt_tls_ca.read_bytes())
    return board


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    factory.close()


def test_board_over_the_stacks_tls_listener_keeps_one_connection_for_10_virtual_minutes_into_kafka(
    make_board: BoardFactory, stack: StackConfig, gateways: GatewayFactory
) -> None:
    """A healthy board: one TLS connection for 10 virtual minutes (health `reconnects` 0, a single
    `online`), every reading in order into Kafka through a gateway that is itself on the TLS listener
    (IOT_MQTT_URL mqtts://, IOT_MQTT_TLS_CA), and the gateway's end-to-end acks back to the board over
    TLS release its outbox. The stream has no settimeout (as on the port before 1.24), reads time out
    with 116, writes are short. Clock at 20x: 10 virtual minutes in about 30 s."""
    board = _tls_board(
        make_board,
        stack,
        interval_s=10,
        keepalive_s=5,
        health_every_s=60,
        # Timeouts shrink with the clock: a 1 s PUBACK wait would be 50 ms of a loaded machine.
        puback_timeout_s=20,
        watchdog_s=120,
        e2e_ack=True,
        ack_timeout_s=600,
        spec={"clock_speed": 20},
    )
    gateways(
        IOT_MQTT_URL=stack.mqtt_tls_url,
        IOT_MQTT_TLS_CA=str(stack.mqtt_tls_ca),
        IOT_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        IOT_GATEWAY_TOPIC_FILTER=contract.reading_topic(board.place, board.device),
        IOT_GATEWAY_SESSION_EXPIRY_S="0",
    )
    kafka = KafkaReader(contract.TOPIC_READINGS, f"^{board.device}$", gateways, stack.kafka_bootstrap)
    with Probe(stack.mqtt_url, [f"sensors/+/{board.device}/#"]) as probe:
        board.start()
        wait_for(
            lambda: [h for h in health_of(probe, board.device) if h["uptime_s"] >= 600], 90, "10 minutes"
        )
        health = health_of(probe, board.device)
        assert [h["reconnects"] for h in health] == [0] * len(health)
        assert [m.payload for m in probe.messages("status", board.device)] == [b"online"]
        seqs = seqs_of(probe.readings(board.device))
        assert len(seqs) >= 55 and seqs == list(range(len(seqs)))
        # Every field the board publishes in health is one the contract names (docs/CONTRACT.md).
        assert set(health[-1]) - {"device", "place"} <= set(contract.HEALTH_FIELDS)
        # Acked end to end: what the board still holds is at most the last few readings in flight.
        assert health[-1]["outbox_depth"] <= 3, health[-1]
        in_kafka = wait_for(
            lambda: {r.value["seq"] for r in kafka.drain()} >= set(seqs) or None, 30, "the readings in Kafka"
        )
        assert in_kafka
    console = board.console()
    assert "link_down" not in console and "link_connect_failed" not in console, console[-2000:]


def test_tls_waits_for_ntp_and_a_bad_ca_fails_the_connect_not_the_board(
    make_board: BoardFactory, stack: StackConfig
) -> None:
    unsynced = _tls_board(make_board, stack, spec={"time_sync": False})
    unsynced.start()
    unsynced.wait_console("link_waiting_for_ntp", 20)
    bad = _tls_board(make_board, stack)
    bogus = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    bad.flash.write("ca.pem", bogus.encode())
    bad.start()
    wait_for(lambda: bad.console().count("link_connect_failed") >= 2, 20, "connects failing with a bad CA")
    assert unsynced.running and bad.running
    assert "Traceback" not in unsynced.console() + bad.console()
    assert "link_up" not in unsynced.console() + bad.console()


def test_a_ca_that_did_not_sign_the_stacks_certificate_is_refused(
    make_board: BoardFactory, stack: StackConfig, tmp_path: Path
) -> None:
    """Verification is real: a well-formed CA of someone else fails the handshake, the board retries."""
    other = tmp_path / "other-ca"
    tls.ensure(other, ["localhost"])
    board = _tls_board(make_board, stack)
    board.flash.write("ca.pem", (other / "ca.crt").read_bytes())
    board.start()
    wait_for(lambda: board.console().count("link_connect_failed") >= 2, 20, "connects refused")
    assert board.running and "link_up" not in board.console()


def test_tls_without_a_ca_file_halts_at_boot_naming_the_field(make_board: BoardFactory) -> None:
    board = make_board(broker="mqtts://localhost:8883")
    board.start()
    assert board.wait(20) == 2
    assert "field=tls_ca_file" in board.console()


def test_iot_boards_takes_an_mqtts_url_and_the_stacks_ca_from_the_environment(
    stack: StackConfig, tmp_path: Path
) -> None:
    """`iot boards` as the gateway is configured: IOT_MQTT_URL mqtts:// and IOT_MQTT_TLS_CA; every
    board verifies the broker with the CA it got on its flash, and the fleet counts over TLS."""
    prefix = unique("vt")
    devices = {p.device for p in fleet.plan(2, 1, 0.5, stack.mqtt_url, prefix=prefix)}
    env = {
        **os.environ,
        "IOT_MQTT_URL": f"mqtts://localhost:{stack.mqtt_tls_port}",
        "IOT_MQTT_TLS_CA": str(stack.mqtt_tls_ca),
    }
    command = [sys.executable, "-m", "iot.app.cli", "boards", "--count", "2", "--interval", "0.5"]
    command += ["--prefix", prefix, "--state-dir", str(tmp_path / "fleet")]
    with Probe(stack.mqtt_url, ["sensors/+/+/reading"], keep=lambda t: t.split("/")[2] in devices) as probe:
        boards = Child("boards", command, tmp_path / "boards.log", env=env).start()
        try:
            wait_for(lambda: {m.topic.split("/")[2] for m in probe.messages()} == devices, 30, "both boards")
        finally:
            code = boards.stop(30)  # SIGTERM: the fleet stops its boards cleanly
    out = boards.log()
    assert code == 0 and not boards.stopped_by_kill, out
    assert f"broker=mqtts://localhost:{stack.mqtt_tls_port}" in out
    counted = int(out.split("boards stopped ")[1].split("readings=")[1].split()[0])
    assert counted > 0 and "failed=none" in out, out
    for device in devices:
        config = json.loads(ImageFlash(tmp_path / "fleet" / device / "flash.img").read("config.json") or b"")
        assert config["tls_ca_file"] == "ca.crt"
    clear_retained(stack.mqtt_url, [(p.place, p.device) for p in fleet.plan(2, 1, 0.5, "", prefix=prefix)])
    assert set(remove_boards(devices)) == devices, "iot boards ran a board without its account"


def test_verified_tls_connects_on_each_micropython_version(
    make_board: BoardFactory, stack: StackConfig, profile: str
) -> None:
    """1.22's ssl.SSLContext.load_verify_locations(cafile=None, *, cadata=None) opens a positional
    argument as a file path; 1.23's tls takes the CA data positionally and no keyword. Before: the
    CA's text was passed positionally on every version, so on 1.22 it was opened as a path and the
    board retried for ever (link_connect_failed, never link_up)."""
    board = _tls_board(make_board, stack, profile=profile)
    board.start()
    board.wait_console("link_up", 30)
    assert "link_connect_failed" not in board.console()


def test_tls_buffers_come_from_the_idf_heap_and_health_reports_its_largest_block(
    make_board: BoardFactory, stack: StackConfig
) -> None:
    """mbedTLS takes its record buffers (16 KB in, 4 KB out) and a handshake peak (~15 KB) from the
    ESP-IDF heap, not the Python heap. Before: health had no view of it (mem_free is the Python
    heap). A board whose IDF heap cannot hold a handshake keeps measuring and says why it cannot
    connect."""
    with Probe(stack.mqtt_url, ["sensors/+/+/#"]) as probe:
        board = _tls_board(make_board, stack)
        starved = _tls_board(make_board, stack, spec={"idf_free_kb": 30})
        board.start()
        starved.start()
        healthy = wait_for(lambda: health_of(probe, board.device), 30, "health over TLS")[-1]
        assert healthy["idf_largest"] == 44 * 1024 - (16717 + 4429)
        wait_for(lambda: starved.console().count("link_connect_failed") >= 2, 30, "connects refused")
        assert "Allocation of memory failed" in starved.console()
        assert starved.running and "link_up" not in starved.console()


def test_a_tls_link_that_stalls_mid_record_keeps_its_session(
    make_board: BoardFactory, stack: StackConfig, profile: str
) -> None:
    """The broker's bytes arrive 3 at a time, then 1.6 s of silence, then the rest of the record. On
    the port a socket timeout under TLS is the session's sticky error (modtls_mbedtls.c last_error:
    OSError(-116) from then on, through 1.27). Before: the board's blocking 1 s socket timed out in
    mid-record and the session was gone (link_down, reconnect). Non-blocking, it waits it out."""
    host, port = "127.0.0.1", stack.mqtt_tls_port
    with StallProxy(host, port) as proxy, Probe(stack.mqtt_url, ["sensors/+/+/#"]) as probe:
        board = _tls_board(
            make_board, stack, broker=f"mqtts://localhost:{proxy.port}", puback_timeout_s=5, profile=profile
        )
        rides_out_a_stall(board, probe, proxy, first_s=30)

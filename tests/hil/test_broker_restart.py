"""The issue's outage as it is: the broker itself stops and comes back (a private Mosquitto, so the
shared one keeps serving everybody else)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.probe import Probe
from tests.hil.conftest import BoardFactory, outbox_entries, outbox_state
from tests.support import unique, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]
MOSQUITTO = "/usr/sbin/mosquitto"


class PrivateBroker:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        workdir.mkdir(parents=True, exist_ok=True)
        # Persistence, so the probe's session and its queued messages survive the restart.
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nuser root\nlog_dest file {workdir}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(listening, 10, f"private mosquitto on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file and exits
            self.proc.wait(10)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    if not os.path.exists(MOSQUITTO):
        pytest.fail(f"{MOSQUITTO} missing: `iot stack install` installs mosquitto")
    broker = PrivateBroker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


def test_broker_stopped_then_back_every_reading_arrives_in_order(
    make_board: BoardFactory, private_broker: PrivateBroker
) -> None:
    """Broker down for IOT_HIL_OUTAGE_S seconds (default 6; the issue's 60 works the same, slower)."""
    outage = float(os.environ.get("IOT_HIL_OUTAGE_S", "6"))
    board = make_board(broker=private_broker.url, interval_s=0.3)
    with Probe(private_broker.url, [f"sensors/+/{board.device}/#"], session=unique("probe")) as probe:
        board.start()
        wait_for(lambda: len(probe.readings(board.device)) >= 3, 20, "3 readings before the outage")
        private_broker.stop()
        target = max(5, int(outage / 0.3))
        wait_for(lambda: outbox_state(board)[1] >= target, outage * 2 + 20, f"{target} readings queued")
        private_broker.start()
        wait_for(lambda: outbox_state(board)[1] == 0, 60, "the outbox drained after the broker came back")
        assert board.stop() == 0
        stopping = next(x for x in board.console().splitlines() if x.startswith("node_stopping"))
        measured = int(stopping.split("next_seq=")[1].split()[0])
        unsent = {r["seq"] for r in outbox_entries(board)}  # kept in flash for the next boot
        delivered = set(range(measured)) - unsent
        assert len(delivered) >= target + 3
        wait_for(
            lambda: delivered <= {r["seq"] for r in probe.readings(board.device)},
            20,
            "every reading at the subscriber",
        )
        # A reading in flight when the board stopped may have reached the broker and still be queued.
        assert {r["seq"] for r in probe.readings(board.device)} <= delivered | unsent
        seqs = [r["seq"] for r in probe.readings(board.device)]
    first: list[int] = []
    for s in seqs:
        if s not in first:
            first.append(s)
    assert first == sorted(first)  # in order
    assert "link_down" in board.console() and "link_connect_failed" in board.console()

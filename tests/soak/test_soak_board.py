"""A soak board sends like the firmware (firmware/outbox.py, firmware/node.py drain): at most WINDOW
readings published and unacked, the rest wait in its outbox; an ack timeout or a reconnect re-sends
that window, never the whole outbox (the backoff between ack timeouts: test_soak_outbox.py).

The board is driven as on a live connection whose broker PUBACKs every PUBLISH: what it writes is
read back as MQTT packets, and end-to-end acks are the gateway's JSON messages."""

from __future__ import annotations

import ast
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from soak_board import Board
from soak_fleet import Fleet
from soak_mqtt import PUBACK, PUBLISH, SUBACK, publish_fields, take_packets
from soak_outbox import WINDOW

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ACK_TIMEOUT_S = 30.0


class Wire:
    """Stands where the board's TCP connection does: keeps what the board writes, PUBLISH by PUBLISH."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def publishes(self) -> list[tuple[int, int]]:
        """(packet id, seq) of every PUBLISH written since the last call, in order."""
        out: list[tuple[int, int]] = []
        for kind, body in take_packets(self.data):
            if kind == PUBLISH:
                _topic, pid, payload = publish_fields(body, qos=1)
                out.append((pid, json.loads(payload)["seq"]))
        return out


def _board() -> tuple[Board, Wire, Fleet]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 1,
        "rate_hz": 1.0,
        "ack_timeout_s": ACK_TIMEOUT_S,
        "ack_timeout_max_s": 300.0,
        "out": "unused.json",
        "boot": 1,
        "boards": [["place000", "soak00000"]],
    }
    fleet = Fleet(config)
    board = fleet.boards[0]
    wire = Wire()
    board.link = wire  # type: ignore[assignment]
    board.ready = True
    return board, wire, fleet


def _sent(board: Board, wire: Wire) -> list[int]:
    """The seqs the board published since the last call; the broker PUBACKs each (its queue drains)."""
    seqs: list[int] = []
    while batch := wire.publishes():
        for pid, seq in batch:
            seqs.append(seq)
            board.on_packet(PUBACK, struct.pack("!H", pid))
    return seqs


def _ack(board: Board, first: int, last: int) -> None:
    board.on_ack(json.dumps({"boot": board.boot, "ranges": [[first, last]]}).encode())


def test_a_board_keeps_at_most_window_readings_unacked_and_the_rest_wait() -> None:
    board, wire, fleet = _board()
    for _ in range(100):
        board.measure()
    assert _sent(board, wire) == list(range(WINDOW))  # PUBACKed, not acked: the window is full
    _ack(board, 0, 9)
    assert _sent(board, wire) == list(range(WINDOW, WINDOW + 10))  # ten acked, ten more go
    for first in range(10, 100, 10):
        _ack(board, first, first + 9)
        _sent(board, wire)
    assert fleet.sent == 100 and fleet.resent == 0
    assert fleet.released == 100 and not board.outbox


def test_an_ack_past_a_missing_reading_does_not_move_the_window() -> None:
    """As on the firmware: acked readings leave the outbox from its front, so one lost ack holds the
    window until the ack timeout re-sends it."""
    board, wire, _ = _board()
    for _ in range(40):
        board.measure()
    assert _sent(board, wire) == list(range(WINDOW))
    _ack(board, 1, WINDOW - 1)
    assert _sent(board, wire) == []
    _ack(board, 0, 0)
    assert _sent(board, wire) == list(range(WINDOW, 2 * WINDOW))


def test_an_ack_timeout_resends_the_window_not_the_outbox() -> None:
    board, wire, fleet = _board()
    for _ in range(500):
        board.measure()
    assert _sent(board, wire) == list(range(WINDOW))
    t0 = time.monotonic()
    board.housekeeping(t0 + ACK_TIMEOUT_S / 2)
    assert _sent(board, wire) == []
    board.housekeeping(t0 + ACK_TIMEOUT_S + 1)
    assert _sent(board, wire) == list(range(WINDOW))  # oldest first, the same seqs
    assert fleet.ack_timeouts == 1 and fleet.resent == WINDOW
    _ack(board, 0, 499)
    assert _sent(board, wire) == list(range(WINDOW, 2 * WINDOW))  # new readings, no more re-sends
    assert fleet.resent == WINDOW


def test_a_reconnect_resends_the_window_not_the_outbox() -> None:
    board, wire, fleet = _board()
    for _ in range(200):
        board.measure()
    assert _sent(board, wire) == list(range(WINDOW))
    board.on_lost(wire)  # type: ignore[arg-type]
    board.link = wire  # type: ignore[assignment]
    board.on_packet(SUBACK, b"\x00\x01\x00")
    assert _sent(board, wire) == list(range(WINDOW))
    assert fleet.resent == WINDOW


def test_the_window_is_the_firmwares() -> None:
    """firmware/node.py makes its Outbox with the default window: the soak's must be that one."""
    tree = ast.parse((REPO / "firmware" / "outbox.py").read_text())
    outbox = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Outbox")
    init = next(n for n in outbox.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = init.args.args[len(init.args.args) - len(init.args.defaults) :]
    window = next(d for a, d in zip(params, init.args.defaults, strict=True) if a.arg == "window")
    assert ast.literal_eval(window) == WINDOW

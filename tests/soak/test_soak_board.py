"""A soak board sends like the firmware (firmware/outbox.py, firmware/node.py drain): at most `window`
readings published and unacked, the rest wait in its outbox; an ack timeout or a reconnect re-sends
that window, never the whole outbox; each ack timeout in a row waits longer, an ack starts over.

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
from soak_fleet import PUBACK, PUBLISH, SUBACK, WINDOW, Board, Fleet

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
        buf, pos = self.data, 0
        while pos < len(buf):
            kind, length, i, mult = buf[pos] >> 4, 0, pos + 1, 1
            while True:
                length += (buf[i] & 0x7F) * mult
                mult *= 128
                i += 1
                if not buf[i - 1] & 0x80:
                    break
            body = bytes(buf[i : i + length])
            if kind == PUBLISH:
                (n,) = struct.unpack_from("!H", body)
                (pid,) = struct.unpack_from("!H", body, 2 + n)
                out.append((pid, json.loads(body[4 + n :])["seq"]))
            pos = i + length
        del buf[:pos]
        return out


def _board(ack_timeout_s: float = ACK_TIMEOUT_S, max_s: float = 300.0) -> tuple[Board, Wire, Fleet]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 1,
        "rate_hz": 1.0,
        "ack_timeout_s": ack_timeout_s,
        "ack_timeout_max_s": max_s,
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


def test_ack_timeouts_in_a_row_wait_longer_and_an_ack_starts_over() -> None:
    # Short waits: every one stays inside the keepalive, which the broker's PINGRESP would refresh.
    timeout_s, max_s = 5.0, 40.0
    board, wire, fleet = _board(timeout_s, max_s)
    for _ in range(50):
        board.measure()
    _sent(board, wire)
    for timeouts in range(1, 6):
        wait = board.ack_wait_s
        now = time.monotonic()  # the window went out just now
        # Never re-sent before the wait it was given: the step doubles, half of it random.
        board.housekeeping(now + wait - 0.5)
        assert _sent(board, wire) == []
        board.housekeeping(now + wait + 0.5)
        assert _sent(board, wire) == list(range(WINDOW))
        assert fleet.ack_timeouts == timeouts and fleet.resent == timeouts * WINDOW
        step = min(timeout_s * 2**timeouts, max_s)
        assert step / 2 <= board.ack_wait_s <= step
    _ack(board, 0, 0)
    assert board.ack_wait_s == timeout_s and board.ack_timeouts == 0


def test_the_window_is_the_firmwares() -> None:
    """firmware/node.py makes its Outbox with the default window: the soak's must be that one."""
    tree = ast.parse((REPO / "firmware" / "outbox.py").read_text())
    outbox = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Outbox")
    init = next(n for n in outbox.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = init.args.args[len(init.args.args) - len(init.args.defaults) :]
    window = next(d for a, d in zip(params, init.args.defaults, strict=True) if a.arg == "window")
    assert ast.literal_eval(window) == WINDOW

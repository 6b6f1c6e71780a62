"""The soak board's outbox on its own (bench/soak_outbox.py), time given: the ack timeout's backoff as
the firmware's (firmware/node.py drain), and readings dropped beyond its capacity counted."""

from __future__ import annotations

import pytest
from soak_outbox import WINDOW, Outbox

pytestmark = pytest.mark.unit


def _send_all(box: Outbox, now: float) -> list[int]:
    seqs = []
    while (entry := box.next_entry(now)) is not None:
        seqs.append(entry.seq)
    return seqs


def _filled(n: int, timeout_s: float = 30.0, max_s: float = 300.0) -> Outbox:
    box = Outbox(timeout_s, max_s)
    for seq in range(n):
        box.push(seq, b"{}", seq)
    return box


def test_ack_timeouts_in_a_row_wait_longer_up_to_the_cap_and_an_ack_starts_over() -> None:
    timeout_s, max_s = 30.0, 300.0
    box = _filled(100, timeout_s, max_s)
    now = 1000.0
    assert _send_all(box, now) == list(range(WINDOW))
    waits = []
    for timeouts in range(1, 9):
        wait = box.ack_wait_s
        # Never re-sent before the wait it was given; then the window, the same readings.
        assert not box.ack_timed_out(now + wait - 0.001)
        now += wait + 0.001
        assert box.ack_timed_out(now)
        assert _send_all(box, now) == list(range(WINDOW))
        step = min(timeout_s * 2**timeouts, max_s)
        assert box.ack_timeouts == timeouts and step / 2 <= box.ack_wait_s <= step
        waits.append(box.ack_wait_s)
    assert waits[-1] >= max_s / 2  # capped: 30 x 2^8 would be 7,680 s
    assert box.ack([(0, 0)]) and box.ack_wait_s == timeout_s and box.ack_timeouts == 0
    assert not box.ack_timed_out(now + timeout_s - 0.001)  # the window's oldest now waits ack_timeout_s again
    assert box.ack_timed_out(now + timeout_s + 0.001)


def test_the_ack_timeout_counts_from_the_oldest_unacked_reading_not_the_newest_send() -> None:
    box = _filled(40)
    assert _send_all(box, 0.0) == list(range(WINDOW))
    assert [e.seq for e in box.ack([(0, 3)])] == [0, 1, 2, 3]
    assert _send_all(box, 10.0) == [16, 17, 18, 19]  # the window slid; seq 4 still waits since 0 s
    assert not box.ack_timed_out(30.0)
    assert box.ack_timed_out(30.001)
    assert _send_all(box, 30.001) == list(range(4, 20))


def test_an_ack_of_a_reading_not_sent_since_the_rewind_releases_nothing() -> None:
    """firmware Outbox.ack looks only at what is in flight."""
    box = _filled(5)
    _send_all(box, 0.0)
    box.rewind()
    assert box.ack([(0, 4)]) == [] and len(box) == 5
    _send_all(box, 1.0)
    assert [e.seq for e in box.ack([(0, 4)])] == [0, 1, 2, 3, 4] and len(box) == 0


def test_beyond_capacity_the_oldest_is_dropped_and_counted() -> None:
    box = Outbox(30.0, 300.0, capacity=50)
    for seq in range(40):
        box.push(seq, b"{}", seq)
    assert _send_all(box, 0.0) == list(range(WINDOW))
    for seq in range(40, 60):
        box.push(seq, b"{}", seq)
    assert box.dropped == list(range(10)) and len(box) == 50
    # The window lost its first ten; what is left of it is still in flight, and six more may go.
    assert box.sending == WINDOW - 10
    assert _send_all(box, 1.0) == list(range(WINDOW, WINDOW + 10))

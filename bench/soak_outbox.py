"""One soak board's readings from measurement to ack, sent as the firmware sends them (firmware/outbox.py
with firmware/node.py's drain); no I/O, the time is given.

- A queue, oldest first. At most WINDOW readings (the firmware's Outbox.window) are published and not
  yet acked: the first ones of the queue; the rest wait.
- An ack marks what it covers among those; acked readings leave from the front only, so one missing
  ack holds the window until the ack timeout.
- Ack timeout: the oldest unacked reading in the window waited `ack_wait_s`. The window is then sent
  again from the front (`rewind`), and the next wait is longer: each timeout in a row doubles it from
  ack_timeout_s up to ack_timeout_max_s, its second half random, never below ack_timeout_s; any ack
  from the gateway starts it over. A slow pipeline gets fewer re-sends, not more.
- A reconnect rewinds too. Nothing else re-sends (the firmware's RAM spill must not: helper fwspill).
- At most `capacity` readings; beyond that the oldest is dropped and counted, as the firmware's flash
  ring does (a drop is a loss the soak reports).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterator

WINDOW = 16  # firmware/outbox.py Outbox(window=16), as firmware/node.py makes it
CAPACITY = 20_000


class Entry:
    """One reading: its seq, its payload, its ts (ms), how often and when last it was sent."""

    __slots__ = ("payload", "sends", "sent_at", "seq", "ts_ms")

    def __init__(self, seq: int, payload: bytes, ts_ms: int) -> None:
        self.seq, self.payload, self.ts_ms = seq, payload, ts_ms
        self.sends = 0
        self.sent_at = 0.0


def next_ack_wait_s(timeouts: int, timeout_s: float, max_s: float) -> float:
    """The firmware's wait after `timeouts` ack timeouts in a row (link.backoff_delay_ms as node.py
    uses it): a step doubling from ack_timeout_s up to ack_timeout_max_s, its second half random,
    never below ack_timeout_s."""
    step = min(timeout_s * (1 << min(timeouts, 20)), max_s)
    return max(timeout_s, step / 2 + random.uniform(0, step / 2))


class Outbox:
    def __init__(
        self, ack_timeout_s: float, ack_timeout_max_s: float, window: int = WINDOW, capacity: int = CAPACITY
    ) -> None:
        self.ack_timeout_s, self.ack_timeout_max_s = ack_timeout_s, ack_timeout_max_s
        self.window, self.capacity = window, capacity
        self.entries: deque[Entry] = deque()
        self.sending = 0  # the first `sending` entries were sent since the last rewind
        self.acked: set[int] = set()  # seqs among those an ack covered while an older one waits
        self.dropped: list[int] = []
        self.ack_wait_s = ack_timeout_s  # how long the oldest unacked reading may wait now
        self.ack_timeouts = 0  # in a row, with no ack between them

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, seq: int, payload: bytes, ts_ms: int) -> None:
        self.entries.append(Entry(seq, payload, ts_ms))
        if len(self.entries) > self.capacity:
            oldest = self.entries.popleft().seq
            if self.sending:
                self.sending -= 1
                self.acked.discard(oldest)
            self.dropped.append(oldest)

    def next_entry(self, now: float) -> Entry | None:
        """The next reading to publish, or None while the window is full or everything is sent; it
        counts as sent at `now`."""
        if self.sending >= self.window or self.sending >= len(self.entries):
            return None
        entry = self.entries[self.sending]
        self.sending += 1
        entry.sends += 1
        entry.sent_at = now
        return entry

    def window_entries(self) -> Iterator[Entry]:
        """What was sent since the last rewind, oldest first."""
        return itertools.islice(self.entries, self.sending)

    def ack(self, ranges: list[tuple[int, int]]) -> list[Entry]:
        """An ack from the gateway covering the inclusive [first, last] seq ranges (of this board's
        boot): the backoff starts over; returns the readings it releases, oldest first."""
        self.ack_timeouts = 0
        self.ack_wait_s = self.ack_timeout_s
        # Only what was sent since the last rewind counts (firmware Outbox.ack).
        for entry in self.window_entries():
            if any(first <= entry.seq <= last for first, last in ranges):
                self.acked.add(entry.seq)
        released: list[Entry] = []
        while self.sending and self.entries[0].seq in self.acked:
            entry = self.entries.popleft()
            self.acked.discard(entry.seq)
            self.sending -= 1
            released.append(entry)
        return released

    def rewind(self) -> None:
        """Send the window again from the front (a reconnect, an ack timeout)."""
        self.sending = 0
        self.acked.clear()

    def ack_timed_out(self, now: float) -> bool:
        """True when the oldest unacked reading in the window waited longer than `ack_wait_s`: then
        the window is rewound and the next wait backs off."""
        oldest = next((e.sent_at for e in self.window_entries() if e.seq not in self.acked), None)
        if oldest is None or now - oldest <= self.ack_wait_s:
            return False
        self.ack_timeouts += 1
        self.ack_wait_s = next_ack_wait_s(self.ack_timeouts, self.ack_timeout_s, self.ack_timeout_max_s)
        self.rewind()
        return True

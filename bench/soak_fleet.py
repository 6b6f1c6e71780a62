"""The fleet side of bench/soak.py: many firmware-like boards in one asyncio process.

Each board has its own MQTT 3.1.1 connection (clean session, like the firmware), publishes payload v1
readings at QoS 1 with (device, boot, seq) ids, subscribes to its own `sensors/{place}/{device}/ack`
and keeps every reading in its outbox until an end-to-end ack covers it (docs/CONTRACT.md). It sends
as the firmware does (firmware/outbox.py, firmware/node.py drain): at most WINDOW readings (the
firmware's Outbox.window) published and not yet acked, from the front of the outbox, oldest
first; the rest wait. Acked readings leave from the front, so one missing ack holds the window. The
window is re-sent, from the front, after every reconnect and, while connected, when its oldest
unacked reading waited the board's ack wait without an ack: each ack timeout in a row doubles that
wait from `ack_timeout_s` up to `ack_timeout_max_s`, half of it random, and any ack from the gateway
starts it over, so a slow pipeline gets fewer re-sends, not more. Everything a board queues is
bounded: PUBLISH_WINDOW un-PUBACKed publishes, OUTBOX_MAX readings (beyond that the oldest is dropped
and counted, as the firmware's ring does; a drop is a loss the soak reports).

The protocol is written out here (asyncio.Protocol, a few packet types) rather than one paho client
per board: 2,000 paho clients means 2,000 threads, and paho in one process with many messages in
flight collapses (shared/FACTS.md). This process runs apart from every measured one.

    python bench/soak_fleet.py CONFIG.json      # started by bench/soak.py; commands on stdin:
        stop            stop measuring new readings (keep re-sending until everything is acked)
        outage SECONDS  drop every connection and stay offline that long (a Wi-Fi/broker outage)
        quit            write the final report to config["out"] and exit
Every second it prints one JSON line of counters on stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import struct
import sys
import time
from array import array
from collections import deque
from collections.abc import Iterator
from typing import Any

from gateway.paho_client import remaining_length

WINDOW = 16  # firmware/outbox.py Outbox(window=16): readings published and not yet acked
PUBLISH_WINDOW = 16
OUTBOX_MAX = 20_000
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
# Like the firmware's puback_timeout_s: a PUBACK this late means the link is bad, so reconnect (and
# re-send everything unacked) instead of waiting on it forever.
PUBACK_TIMEOUT_S = 10.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 5.0

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13
_PINGREQ = b"\xc0\x00"


def _utf8(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def next_ack_wait_s(timeouts: int, timeout_s: float, max_s: float) -> float:
    """The firmware's wait after `timeouts` ack timeouts in a row (link.backoff_delay_ms as node.py
    uses it): a step doubling from ack_timeout_s up to ack_timeout_max_s, its second half random,
    never below ack_timeout_s."""
    step = min(timeout_s * (1 << min(timeouts, 20)), max_s)
    return max(timeout_s, step / 2 + random.uniform(0, step / 2))


class Link(asyncio.Protocol):
    """One board's TCP connection: frames MQTT packets and hands them to the board."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= len(buf):
                    del buf[:pos]
                    return
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
                if i - pos > 5:
                    self.close()
                    return
            if len(buf) < i + length:
                break
            self.board.on_packet(buf[pos] >> 4, bytes(buf[i : i + length]))
            pos = i + length
        del buf[:pos]

    def connection_lost(self, _exc: Exception | None) -> None:
        self.board.on_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Board:
    def __init__(self, fleet: Fleet, place: str, device: str, boot: int, index: int) -> None:
        self.fleet = fleet
        self.place, self.device, self.boot, self.index = place, device, boot, index
        self.topic = _utf8(f"sensors/{place}/{device}/reading".encode())
        self.ack_topic = f"sensors/{place}/{device}/ack"
        # [seq, payload, ts_ms, last sent (monotonic, 0 = never)], oldest first. The first `sending`
        # were published since the last rewind (at most WINDOW); `acked` holds those of them an
        # ack covered while an older one waits (they leave from the front, as on the firmware).
        self.outbox: deque[list[Any]] = deque()
        self.sending = 0
        self.acked: set[int] = set()
        self.inflight: dict[int, int] = {}  # packet id -> seq, not yet PUBACKed
        self.inflight_since: dict[int, float] = {}  # packet id -> when sent
        self.link: Link | None = None
        self.ready = False
        self.connect_started = 0.0
        self.last_tx = 0.0
        self.last_rx = 0.0
        self.next_seq = 0
        self.next_pid = 0
        self.dropped: list[int] = []
        self.lost = asyncio.Event()
        self.ready_once = False
        # The ack timeout's backoff: how long the oldest unacked reading may wait now, and the ack
        # timeouts in a row.
        self.ack_wait_s = fleet.ack_timeout_s
        self.ack_timeouts = 0

    # --- readings -----------------------------------------------------------------------------

    def measure(self) -> None:
        seq = self.next_seq
        self.next_seq += 1
        d = self.index
        reading = {
            "v": 1,
            "device": self.device,
            "place": self.place,
            "boot": self.boot,
            "seq": seq,
            "ts": now_ms(),
            "time_valid": True,
            # Multiples of 1/64: exact in binary, so a window's mean has one right answer.
            "temperature": 15 + ((seq * 7 + d) % 640) / 64,
            "humidity": 40 + ((seq * 3 + d) % 1280) / 64,
            "pressure": 1000 + ((seq + d) % 640) / 64,
            "luminosity": None if seq % 97 == 5 else ((seq * 11 + d) % 64000) / 64,
            "fw": "soak-1.0",
        }
        self.outbox.append([seq, json.dumps(reading, separators=(",", ":")).encode(), reading["ts"], 0.0])
        self.fleet.published += 1
        if len(self.outbox) > OUTBOX_MAX:
            oldest = self.outbox.popleft()[0]
            if self.sending:
                self.sending -= 1
                self.acked.discard(oldest)
            self.dropped.append(oldest)
        self.pump()

    def rewind(self) -> None:
        """Send the window again from the front (after a reconnect or an ack timeout)."""
        self.sending = 0
        self.acked.clear()

    def pump(self) -> None:
        link = self.link
        if link is None or not self.ready:
            return
        now = time.monotonic()
        outbox = self.outbox
        while self.sending < WINDOW and self.sending < len(outbox) and len(self.inflight) < PUBLISH_WINDOW:
            entry = outbox[self.sending]
            self.sending += 1
            seq = entry[0]
            pid = self._packet_id()
            body = self.topic + struct.pack("!H", pid) + entry[1]
            link.write(b"\x32" + remaining_length(len(body)) + body)
            if entry[3]:
                self.fleet.resent += 1
            else:
                # The generator's own part of ts -> Kafka: a reading measured while its board was
                # offline or its publish window full waits here, like on a board.
                self.fleet.send_ts.append(entry[2])
                self.fleet.send_lag.append(now_ms() - entry[2])
            entry[3] = now
            self.inflight[pid] = seq
            self.inflight_since[pid] = now
            self.fleet.sent += 1
            self.last_tx = now

    def _packet_id(self) -> int:
        for _ in range(65536):
            self.next_pid = self.next_pid % 65535 + 1
            if self.next_pid not in self.inflight:
                return self.next_pid
        raise RuntimeError("no free packet id")

    def housekeeping(self, now: float) -> None:
        """Once a second: connect timeout, keepalive, ack timeout."""
        link = self.link
        if link is None:
            return
        if not self.ready:
            if now - self.connect_started > CONNECT_TIMEOUT_S:
                link.close()
            return
        if now - self.last_rx > KEEPALIVE_S * 1.5:
            # The broker answers every PINGREQ: this long without a packet is a dead link.
            self.fleet.keepalive_timeouts += 1
            link.close()
            return
        if self.inflight_since and now - min(self.inflight_since.values()) > PUBACK_TIMEOUT_S:
            self.fleet.puback_timeouts += 1
            link.close()
            return
        if now - self.last_tx > KEEPALIVE_S / 2:
            link.write(_PINGREQ)
            self.last_tx = now
        oldest = next((e[3] for e in self._window() if e[0] not in self.acked), None)
        if oldest is not None and now - oldest > self.ack_wait_s:
            # An ack timeout: the window goes again, and the next timeout waits longer until an ack.
            fleet = self.fleet
            self.ack_timeouts += 1
            self.ack_wait_s = next_ack_wait_s(self.ack_timeouts, fleet.ack_timeout_s, fleet.ack_timeout_max_s)
            fleet.ack_timeouts += 1
            self.rewind()
            self.pump()

    def _window(self) -> Iterator[list[Any]]:
        """The readings published since the last rewind, oldest first."""
        return itertools.islice(self.outbox, self.sending)

    # --- MQTT ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN_S
        fleet = self.fleet
        while not fleet.quitting:
            wait = fleet.outage_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait + random.uniform(0, 1.0))
                continue
            try:
                _t, link = await asyncio.wait_for(
                    loop.create_connection(lambda: Link(self), fleet.host, fleet.port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError, asyncio.CancelledError):
                if fleet.quitting:
                    raise
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            self.lost.clear()
            self.link = link
            self.connect_started = self.last_tx = self.last_rx = time.monotonic()
            password = fleet.passwords.get(self.device)
            # Clean session (0x02), plus user name and password (0xC0) when the board has an account.
            flags = 0xC2 if password else 0x02
            body = (
                _utf8(b"MQTT")
                + bytes([4, flags])
                + struct.pack("!H", KEEPALIVE_S)
                + _utf8(self.device.encode())
            )
            if password:
                body += _utf8(self.device.encode()) + _utf8(password.encode())
            link.write(b"\x10" + remaining_length(len(body)) + body)
            await self.lost.wait()
            if self.ready_once:
                backoff = BACKOFF_MIN_S
            self.ready_once = False
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def on_packet(self, kind: int, body: bytes) -> None:
        self.last_rx = time.monotonic()
        if kind == PUBACK:
            pid = struct.unpack_from("!H", body)[0]
            seq = self.inflight.pop(pid, None)
            self.inflight_since.pop(pid, None)
            if seq is not None:
                self.pump()
        elif kind == PUBLISH:
            (n,) = struct.unpack_from("!H", body)
            self.on_ack(body[2 + n :])
        elif kind == CONNACK:
            if len(body) < 2 or body[1] != 0:
                self.fleet.refused += 1
                if self.link is not None:
                    self.link.close()
                return
            sub = struct.pack("!H", self._packet_id()) + _utf8(self.ack_topic.encode()) + b"\x00"
            assert self.link is not None
            self.link.write(b"\x82" + remaining_length(len(sub)) + sub)
        elif kind == SUBACK:
            self.ready = self.ready_once = True
            self.fleet.connects += 1
            # The window goes again after a (re)connect, oldest first.
            self.rewind()
            self.pump()

    def on_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            boot, ranges = ack["boot"], ack["ranges"]
        except (ValueError, KeyError, TypeError):
            self.fleet.bad_acks += 1
            return
        self.fleet.acks += 1
        if boot != self.boot:
            return
        self.ack_timeouts = 0  # the gateway acks: the next re-send waits ack_timeout_s again
        self.ack_wait_s = self.fleet.ack_timeout_s
        # Only what is in the window counts (firmware Outbox.ack): an ack for a reading not sent since
        # the last rewind does not release it.
        for entry in self._window():
            seq = entry[0]
            if any(first <= seq <= last for first, last in ranges):
                self.acked.add(seq)
        now = now_ms()
        outbox = self.outbox
        while self.sending and outbox[0][0] in self.acked:
            entry = outbox.popleft()
            self.acked.discard(entry[0])
            self.sending -= 1
            self.fleet.latency.append(now - entry[2])
            self.fleet.released += 1
        self.pump()

    def on_lost(self, link: Link) -> None:
        if link is not self.link:
            return
        self.link = None
        self.ready = False
        self.inflight.clear()
        self.inflight_since.clear()
        self.rewind()
        self.lost.set()


class Fleet:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.rate_hz: float = config["rate_hz"]
        self.ack_timeout_s: float = config["ack_timeout_s"]
        self.ack_timeout_max_s: float = config["ack_timeout_max_s"]
        self.out: str = config["out"]
        # Each board's own account (client id = device id, bound by the broker); none: anonymous.
        self.passwords: dict[str, str] = config.get("passwords") or {}
        self.boards = [
            Board(self, place, device, config["boot"], index)
            for index, (place, device) in enumerate(config["boards"])
        ]
        self.measuring = True
        self.quitting = False
        self.outage_until = 0.0
        self.published = self.sent = self.resent = self.released = 0
        self.acks = self.bad_acks = self.connects = self.refused = 0
        self.puback_timeouts = self.keepalive_timeouts = self.revived = self.ack_timeouts = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.latency = array("q")
        self.send_ts = array("q")  # ts of each reading, in order of first PUBLISH
        self.send_lag = array("q")  # ms from a reading's ts to its first PUBLISH
        self.loop_lag = array("q")  # ms a reading was measured after it was due (a starved process)

    async def main(self) -> None:
        self.tasks = tasks = [asyncio.create_task(b.run()) for b in self.boards]
        producer = asyncio.create_task(self.produce())
        keeper = asyncio.create_task(self.keep())
        await self.commands()
        self.quitting = True
        for board in self.boards:
            if board.link is not None:
                board.link.close()
            board.lost.set()
        for task in (*tasks, producer, keeper):
            task.cancel()
        await asyncio.gather(*tasks, producer, keeper, return_exceptions=True)
        self.report()

    async def produce(self) -> None:
        period = 1.0 / self.rate_hz
        start = time.monotonic()
        # Phases spread evenly over one period; one shared period keeps the deque sorted by due time.
        due: deque[tuple[float, Board]] = deque(
            (start + period * i / len(self.boards), b) for i, b in enumerate(self.boards)
        )
        while self.measuring:
            now = time.monotonic()
            while due and due[0][0] <= now:
                when, board = due.popleft()
                self.loop_lag.append(int((now - when) * 1000))
                board.measure()
                due.append((when + period, board))
            await asyncio.sleep(max(0.0, min(0.05, due[0][0] - time.monotonic())) if due else 0.05)

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for board in self.boards:
                board.housekeeping(now)
            self.revive()
            self.stats()

    def revive(self) -> None:
        """A board's connection task must never end while the fleet runs (one did, once, in a 2,000-board
        soak, and its readings then sat on it forever): report how and start it again."""
        if self.quitting:
            return
        for i, task in enumerate(self.tasks):
            if not task.done():
                continue
            board = self.boards[i]
            error = "cancelled" if task.cancelled() else repr(task.exception())
            sys.stderr.write(f"board_task_ended device={board.device} error={error} action=restarted\n")
            sys.stderr.flush()
            self.revived += 1
            board.lost.set()
            self.tasks[i] = asyncio.create_task(board.run())

    def stats(self) -> None:
        line = {
            "t": time.time(),
            "published": self.published,
            "sent": self.sent,
            "resent": self.resent,
            "released": self.released,
            "outbox": sum(len(b.outbox) for b in self.boards),
            "connected": sum(1 for b in self.boards if b.ready),
            "dropped": sum(len(b.dropped) for b in self.boards),
            "acks": self.acks,
            "bad_acks": self.bad_acks,
            "connects": self.connects,
            "refused": self.refused,
            "puback_timeouts": self.puback_timeouts,
            "ack_timeouts": self.ack_timeouts,
            "keepalive_timeouts": self.keepalive_timeouts,
            "revived": self.revived,
            "not_ready_with_outbox": sum(1 for b in self.boards if b.outbox and not b.ready),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                return
            if line[0] == "stop":
                self.measuring = False
            elif line[0] == "outage":
                self.outage_until = time.monotonic() + float(line[1])
                for board in self.boards:
                    if board.link is not None:
                        board.link.close()

    def report(self) -> None:
        boards = {
            b.device: {
                "place": b.place,
                "boot": b.boot,
                "next_seq": b.next_seq,
                "unacked": [e[0] for e in b.outbox],
                "dropped": b.dropped,
                "ready": b.ready,
                "linked": b.link is not None,
                "inflight": b.sending,
                "queued": len(b.outbox) - b.sending,
            }
            for b in self.boards
        }
        with open(self.out, "w") as f:
            json.dump(
                {
                    "boards": boards,
                    "ack_latency_ms": self.latency.tolist(),
                    "send_ts": self.send_ts.tolist(),
                    "send_lag_ms": self.send_lag.tolist(),
                    "loop_lag_ms": self.loop_lag.tolist(),
                },
                f,
            )
        self.stats()
        sys.stdout.write(json.dumps({"final": True}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(Fleet(json.load(f)).main())

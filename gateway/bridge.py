"""The bridge: each MQTT message becomes one Kafka record, and is acked to the broker only once Kafka
confirmed that record (acks=all). A crash anywhere before the ack leaves the message with the broker,
which redelivers it: at-least-once, duplicates identified downstream by (device, boot, seq).

End-to-end ack: in the same step that PUBACKs the broker, the bridge tells each board which of its
readings Kafka now holds (`sensors/{place}/{device}/ack`, QoS 0, `{"boot", "ranges"}`; valid readings
and rejected ones whose (device, boot, seq) is known alike). A board releases a reading only then, so a
broker that PUBACKed a reading and lost it (SIGKILL before delivery) costs a re-send, never the reading.

Threads: `on_message` runs in the MQTT network thread; delivery callbacks and `service` run in the
service's main thread. Counters that both read are each written by one thread only.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from iot import contract, log

from .kafka_sink import KafkaSink
from .metrics import GatewayMetrics
from .records import MAX_CLOCK_AHEAD_MS, Outgoing, dead_letter, route

__all__ = ["Ack", "Bridge", "Notify"]

# A record that failed to queue or deliver is sent again after this pause, not in a hot loop.
RETRY_AFTER_S: Final = 0.5
BACKPRESSURE_AFTER_S: Final = 1.0

Ack = Callable[[list[tuple[int, int, int]]], int]
"""ack([(mid, qos, session_generation), ...]): acknowledge messages to the broker; returns how many
were sent (not QoS 0 ones, nor those of an earlier connection, which the broker redelivers)."""

Notify = Callable[[list[tuple[str, bytes]]], int]
"""notify([(topic, payload), ...]): publish end-to-end acks (QoS 0); returns how many were sent."""

_log = log.get("gateway.bridge")

# A board's ack topic, formatted once per board rather than once per ack message.
_ack_topic: Final = functools.lru_cache(maxsize=16_384)(contract.ack_topic)


@dataclass(slots=True)
class _Pending:
    out: Outgoing
    mid: int
    qos: int
    generation: int
    received: float
    retry_at: float = 0.0


class Bridge:
    def __init__(
        self,
        sink: KafkaSink,
        metrics: GatewayMetrics,
        ack: Ack,
        max_in_flight: int,
        notify: Notify | None = None,
        max_clock_ahead_ms: int = MAX_CLOCK_AHEAD_MS,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self._max_clock_ahead_ms = max_clock_ahead_ms
        self._metrics = metrics
        self._ack = ack
        self._notify = notify
        self._max_in_flight = max_in_flight
        self._resume = resume  # tells the MQTT side that may_take() may have turned true
        self._peak = 0  # written by the MQTT thread only
        self._received = 0  # written by the MQTT thread only
        self._received_counted = 0  # main thread only: how many of them the received metric has
        self._completed = 0  # written by the main thread only
        self._acked = 0  # main thread only: acks handed to the MQTT client after Kafka confirmed
        self._retries: deque[_Pending] = deque()
        self._confirmed: list[_Pending] = []  # main thread only: delivered, not yet acked
        self._saturated = False
        self._at_limit_since: float | None = None
        self.accepting = True

    @property
    def received(self) -> int:
        return self._received

    @property
    def completed(self) -> int:
        """Messages Kafka confirmed (readings and dead letters alike)."""
        return self._completed

    @property
    def acked(self) -> int:
        """Messages acknowledged to the broker (each after Kafka confirmed it)."""
        return self._acked

    @property
    def in_flight(self) -> int:
        return self._received - self._completed

    @property
    def peak_in_flight(self) -> int:
        """The most readings ever in flight at once (received, Kafka not yet confirmed)."""
        return self._peak

    def may_take(self) -> bool:
        """Asked by the MQTT side before it takes each PUBLISH from the stream: the in-flight bound.
        The broker's Receive Maximum alone does not hold it (Mosquitto 2.0.11 refills a session's
        in-flight window per PUBACK by the acked message's place in it, not by what is in flight:
        a drained backlog came in at 22-138k readings at once against 5,000)."""
        return self._received - self._completed < self._max_in_flight

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int, generation: int) -> None:
        """Called for every message; never raises and never blocks. Whatever happens to the message's
        bookkeeping, the message itself becomes one Kafka record (a reading or a dead letter)."""
        if not self.accepting:
            # Shutting down: left un-acked, so the broker keeps it in this session and redelivers it.
            return
        now = time.time()
        self._received += 1
        in_flight = self._received - self._completed
        if in_flight > self._peak:
            self._peak = in_flight
        try:
            out = route(topic, payload, int(now * 1000), self._max_clock_ahead_ms)
        except Exception as exc:  # bad input must never take the gateway down
            _log.error("route_failed", topic=topic, error=repr(exc), action="sent to the DLQ; please report")
            out = dead_letter(topic, payload, contract.REASON_UNPROCESSABLE, repr(exc)[:200], int(now * 1000))
        try:
            if out.reason is None:
                self._metrics.devices.reading(topic, now)
                if out.restamped:
                    self._metrics.restamped(topic)
        except Exception as exc:  # metrics only: the record goes on
            _log.error("metrics_failed", topic=topic, error=repr(exc), action="please report")
        self._send(_Pending(out, mid, qos, generation, now))

    def service(self) -> None:
        """Main-thread work after each Kafka poll: count what was received, ack what Kafka confirmed,
        re-send due retries, report saturation changes."""
        # The received counter in one step per poll (<= 50 ms), not per message from the MQTT thread
        # (a lock and a check per reading); counted before the acks, so acked never runs ahead of it.
        received = self._received
        if received != self._received_counted:
            self._metrics.received.inc(received - self._received_counted)
            self._received_counted = received
        self._ack_confirmed()
        now = time.time()
        for _ in range(len(self._retries)):
            pending = self._retries[0]
            if pending.retry_at > now:
                break
            self._retries.popleft()
            self._send(pending)
        self._report_saturation(now)

    def _report_saturation(self, now: float) -> None:
        # Only a limit that holds (Kafka slow or away) is worth a log line: at full speed the in-flight
        # count brushes the limit all the time.
        in_flight = self.in_flight
        if in_flight < self._max_in_flight:
            self._at_limit_since = None
        elif self._at_limit_since is None:
            self._at_limit_since = now
        if not self._saturated and self._at_limit_since is not None:
            if now - self._at_limit_since >= BACKPRESSURE_AFTER_S:
                self._saturated = True
                _log.warning(
                    "backpressure_on",
                    in_flight=in_flight,
                    limit=self._max_in_flight,
                    action="broker holds further readings until Kafka confirms these",
                )
        elif self._saturated and in_flight <= self._max_in_flight // 2:
            self._saturated = False
            _log.info("backpressure_off", in_flight=in_flight)

    def _send(self, pending: _Pending) -> None:
        try:
            self._sink.send(pending.out, lambda err, msg: self._delivered(pending, err, msg))
        except BufferError:
            self._retry(pending, "local_queue_full")
        except Exception as exc:  # e.g. KafkaException (unknown topic): retried
            self._retry(pending, type(exc).__name__)

    def _retry(self, pending: _Pending, error: str) -> None:
        self._metrics.kafka_errors.labels(error=error.lower()).inc()
        pending.retry_at = time.time() + RETRY_AFTER_S
        self._retries.append(pending)

    def _delivered(self, pending: _Pending, err: Any, _msg: Any) -> None:
        if err is not None:
            self._sink.delivery_failed(err)
            _log.warning("delivery_failed", topic=pending.out.topic, error=err.str(), action="retrying")
            pending.retry_at = time.time() + RETRY_AFTER_S
            self._retries.append(pending)
            return
        self._confirmed.append(pending)

    def _ack_confirmed(self) -> None:
        confirmed = self._confirmed
        if not confirmed:
            return
        self._confirmed = []
        self._sink.delivered_ok()
        # Counted before the acks go out: their wake-up of the MQTT thread then finds room under the
        # in-flight bound (may_take).
        self._completed += len(confirmed)
        # One batch of acks per Kafka poll: one wake-up of the MQTT thread instead of one per message.
        acked = self._ack([(p.mid, p.qos, p.generation) for p in confirmed])
        if not acked and self._resume is not None:
            self._resume()  # no PUBACK (an earlier connection's messages) woke it
        self._acked += acked
        self._metrics.acked.inc(acked)
        if self._notify is not None:
            self._notify_boards(self._notify, confirmed)
        now = time.time()
        produced = 0
        for pending in confirmed:
            self._metrics.latency.observe(now - pending.received)
            if pending.out.reason is None:
                produced += 1
            else:
                self._metrics.rejected.labels(reason=pending.out.reason).inc()
        self._metrics.produced.inc(produced)

    def _notify_boards(self, notify: Notify, confirmed: list[_Pending]) -> None:
        # One ack message per (board, boot) per flush. Sent even for messages of an earlier MQTT
        # connection (whose PUBACK is dropped): Kafka holds them either way, and the board may let go.
        seqs: dict[tuple[str, str, int], list[int]] = {}
        for pending in confirmed:
            ident = pending.out.ident
            if ident is not None:
                place, device, boot, seq = ident
                board = seqs.get((place, device, boot))
                if board is None:
                    seqs[(place, device, boot)] = [seq]
                else:
                    board.append(seq)
        if not seqs:
            return
        messages: list[tuple[str, bytes]] = []
        for (place, device, boot), board_seqs in seqs.items():
            topic = _ack_topic(place, device)
            for payload in contract.encode_acks(boot, board_seqs):
                messages.append((topic, payload))
        sent = notify(messages)
        self._metrics.e2e_acks.inc(sent)
        if sent < len(messages):
            # QoS 0 while the broker is away: the boards re-send after their ack timeout (a duplicate
            # downstream de-duplicates), nothing is lost.
            self._metrics.e2e_acks_unsent.inc(len(messages) - sent)

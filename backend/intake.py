"""A batch's input records turned into the engine's items, each record on its own; and the DLQ records
of what the batch path sets aside.

A record that is not a reading (backend/records.py says why), or one this code fails on, becomes a DLQ
record with its context (topic, partition, offset, key) and never takes another record of its batch
with it. The same goes for a stored window document the batch path cannot amend: stored documents are
input too (backend/stored.py), so `document_bytes` shows one in the DLQ whatever it holds.

Kept apart from the batch path (backend/batches.py) because it is the one place where a record is
isolated; `Intake.readings` is on the per-reading path (issue #24): its loop does per record what it
must and nothing more (no call or look-up that only a rejected record needs).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iot import contract, log

from .batch_io import Item
from .metrics import BackendMetrics
from .records import (
    FORWARD_SLOTS,
    PLACE,
    SENSOR,
    UNKNOWN_TOPIC,
    WATERMARKS_KEY,
    RejectedRecord,
    decode_forwarded,
    decode_reading,
    decode_watermarks,
    dlq_record,
    encode_forward,
)

_log = log.get("backend")
_WATERMARKS_KEY = WATERMARKS_KEY.encode()
# The source watermarks each place partition received: (place partition, source partition) ->
# (watermark or None once caught up, monotonic time received). records.WATERMARKS_KEY.
PlaceMarks = dict[tuple[int, int], tuple[int | None, float]]


@dataclass(slots=True)
class Decoded:
    """One batch of input records as the engine takes them, with the records it came from, the DLQ
    records of what it rejected, and the stored readings read for it (de-duplication)."""

    messages: Sequence[Any]
    items: list[Item] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (place scope) the holds of its windows once the batch is in (ScopeEngine.process)
    holds: dict[int, int] | None = None
    # (place scope) the holds in force before the batch: from the watermarks records received before it
    holds_before: dict[int, int] | None = None
    _by_position: dict[tuple[int, int], Any] | None = None

    def record(self, partition: int, offset: int) -> Any:
        """The input message at (partition, offset) of this batch (a DLQ record's context), None if
        the batch has none there. Indexed at the first call: only a batch with a DLQ record needs it."""
        if self._by_position is None:
            self._by_position = {(m.partition, m.offset): m for m in self.messages}
        return self._by_position.get((partition, offset))


class Intake:
    """Decodes the input records of both scopes; what it sets aside is counted in `metrics` by reason."""

    def __init__(self, metrics: BackendMetrics) -> None:
        self.metrics = metrics

    def readings(self, messages: Sequence[Any], now: int) -> Decoded:
        """iot.readings records, each on its own: a record that is not a reading (or that this code
        fails on) goes to the DLQ with its context, never taking another with it."""
        out = Decoded(messages)
        for msg in messages:
            value = msg.value
            try:
                reading = decode_reading(value)
                if msg.key != reading["device"].encode():
                    raise RejectedRecord(
                        contract.REASON_KEY_MISMATCH,
                        f"record key {msg.key!r} is not the device id {reading['device']!r}: a device's"
                        " readings must be one partition, in order",
                        contract.reading_topic(reading["place"], reading["device"]),
                    )
                # The form forwarded to the place scope; made here, where a reading that cannot be
                # encoded is still one record to set aside.
                forward = encode_forward(reading)
            except RejectedRecord as exc:
                out.rejected.append(self.reject(exc.reason, exc.detail, exc.topic, msg, value, now))
                continue
            except Exception as exc:
                out.rejected.append(self.unprocessable(SENSOR, exc, msg, value, now))
                continue
            out.items.append(Item(reading, msg.partition, msg.offset, None, forward))
        return out

    def forwards(self, messages: Sequence[Any], now: int, marks: PlaceMarks, received: float) -> Decoded:
        """Place repartition records, written by our own sensor scope after validation: only decoding
        is left to do. A bundle's readings get consecutive input offsets of their own
        (records.FORWARD_SLOTS) and keep their origin in iot.readings. A watermarks record is no
        item: what it says is put in `marks`, as received at `received` (monotonic)."""
        out = Decoded(messages)
        for msg in messages:
            if msg.key == _WATERMARKS_KEY:
                try:
                    decoded_marks = decode_watermarks(msg.value)
                except RejectedRecord as exc:
                    out.rejected.append(self.reject(exc.reason, exc.detail, exc.topic, msg, msg.value, now))
                    continue
                for source, mark in decoded_marks.items():
                    marks[msg.partition, source] = (mark, received)
                continue
            base = msg.offset * FORWARD_SLOTS
            try:
                decoded = decode_forwarded(msg.value)
            except Exception as exc:
                out.rejected.append(self.unprocessable(PLACE, exc, msg, msg.value, now))
                continue
            for index, item in enumerate(decoded):
                if isinstance(item, RejectedRecord):
                    out.rejected.append(
                        self.reject(item.reason, item.detail, item.topic, msg, msg.value, now)
                    )
                    continue
                reading, origin = item
                out.items.append(Item(reading, msg.partition, base + index, origin))
        return out

    def reject(
        self, reason: str, detail: str, topic: str, msg: Any, value: bytes | None, now: int
    ) -> dict[str, Any]:
        """A record that is not a reading (`reason`, records.RejectedRecord): the producer's fault."""
        self.metrics.rejected.labels(reason).inc()
        _log.warning(
            "reading_rejected",
            reason=reason,
            detail=detail,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            action="sent to DLQ; fix the producer of this record",
        )
        source = contract.kafka_source(msg.topic, msg.partition, msg.offset, msg.key)
        return dlq_record(reason, detail, topic, value or b"", now, source)

    def unprocessable(
        self, scope: str, exc: BaseException, msg: Any, value: bytes | None, now: int
    ) -> dict[str, Any]:
        """A record this code failed on: a bug, but one record's. It goes to the DLQ (with the error)
        and the batch goes on without it."""
        self.metrics.rejected.labels(contract.REASON_UNPROCESSABLE).inc()
        detail = f"{type(exc).__name__}: {exc}"[:300]
        _log.error(
            "record_unprocessable",
            scope=scope,
            error=detail,
            topic=getattr(msg, "topic", None),
            partition=getattr(msg, "partition", None),
            offset=getattr(msg, "offset", None),
            action="sent to DLQ (reason unprocessable): a bug in the backend, report it with this record",
            where=where(exc),
        )
        source = None
        if msg is not None:
            source = contract.kafka_source(msg.topic, msg.partition, msg.offset, msg.key)
        return dlq_record(contract.REASON_UNPROCESSABLE, detail, UNKNOWN_TOPIC, value or b"", now, source)


def where(exc: BaseException) -> str:
    """Where an exception was raised (file:line in function), for a log line that stays one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def document_bytes(doc: Any) -> bytes:
    """A stored document as JSON for the DLQ (dates and other BSON types as text), whatever it holds."""
    try:
        return json.dumps(doc, default=str, allow_nan=True).encode()
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return repr(doc)[: contract.DLQ_PAYLOAD_CAP].encode("utf-8", "backslashreplace")
    except RecursionError:
        return b"(a document too deeply nested to show)"

"""The closed windows a batch reached: amended from their stored documents, rebuilt from the stored
readings when a document is no window.

Closed windows live in MongoDB only (bounded memory), so a batch with late readings reads their
documents back and the engine applies the readings to them (ScopeEngine.amend). A stored document is
input too: one that is no valid window (backend/stored.py) is rebuilt from the stored readings it
covers, the source of truth, and goes to the DLQ as `corrupt_window`.

Kept apart from the batch path (backend/batches.py): it runs only for batches with late readings, off
the per-reading path, and it is the batch path's one read-modify-write of what is stored.
"""

from __future__ import annotations

from typing import Any

from iot import contract, log

from . import retry
from .batch_io import Outputs
from .engine import ScopeEngine
from .intake import document_bytes
from .metrics import BackendMetrics
from .mongo_sink import MongoSink
from .records import SENSOR, dlq_record, reading_id_of
from .stored import Rebuilt, rebuild

_log = log.get("backend")


class Amender:
    """Amends the closed windows of both scopes over one MongoDB sink; reads are retried until done."""

    def __init__(self, sink: MongoSink, metrics: BackendMetrics, mongo_host: str) -> None:
        self.sink = sink
        self.metrics = metrics
        self.mongo_host = mongo_host

    async def amend(
        self, scope: str, engine: ScopeEngine, out: Outputs, rejected: list[dict[str, Any]], now: int
    ) -> None:
        """Load the closed windows the batch amends and apply the late readings to them. Closed windows
        live in MongoDB only (bounded memory), so this read is part of the batch; it is retried like a
        write, since skipping it would drop the readings. A stored document that is no valid window is
        rebuilt from the stored readings and goes to the DLQ as `corrupt_window`."""
        if not out.amends:
            return
        ids = list(out.amends)
        stored = await retry.until_done(
            "amendment_read_failed",
            lambda: self.sink.load_windows(scope, ids),
            "check MongoDB (iot stack status); the batch waits, nothing is lost",
            scope=scope,
            mongo=self.mongo_host,
        )
        engine.amend(out, stored, now)
        if out.corrupt:
            rebuilt = {wid: await self._rebuild(scope, out, wid, rejected, now) for wid in list(out.corrupt)}
            engine.amend(out, stored, now, rebuilt)
        if out.amended_docs:
            _log.info(
                "windows_amended",
                scope=scope,
                windows=len(out.amended_docs),
                created=sum(1 for d in out.amended_docs if d["revision"] == 0),
                readings=out.amended_readings,
            )

    async def _rebuild(
        self, scope: str, out: Outputs, wid: str, rejected: list[dict[str, Any]], now: int
    ) -> Rebuilt:
        """Window `wid` from the stored readings it covers (and this batch's, not stored yet); its
        corrupt document to the DLQ."""
        doc, detail = out.corrupt[wid]
        amendment = out.amends[wid]
        key, start, end = amendment.key, amendment.wkey.start, amendment.wkey.end
        readings = await retry.until_done(
            "window_rebuild_read_failed",
            lambda: self.sink.window_readings(scope, key, start, end),
            "check MongoDB (iot stack status); the batch waits, nothing is lost",
            scope=scope,
            mongo=self.mongo_host,
        )
        field_ = "device" if scope == SENSOR else "place"
        for item in out.readings:
            r = item.reading
            if r[field_] == key and start <= r["ts"] < end:
                readings.append({**r, "_id": reading_id_of(r)})
        again = rebuild(readings)
        self.metrics.rebuilt.labels(scope).inc()
        self.metrics.rejected.labels(contract.REASON_CORRUPT_WINDOW).inc()
        _log.error(
            "window_corrupt",
            scope=scope,
            window=wid,
            detail=detail,
            rebuilt_from=len(again.ids),
            unusable=len(again.unusable),
            action="rebuilt from the stored readings; the document is in the DLQ (corrupt_window):"
            " find what wrote it",
        )
        unusable = f"; stored readings not usable: {', '.join(again.unusable[:10])}" if again.unusable else ""
        rejected.append(
            dlq_record(
                contract.REASON_CORRUPT_WINDOW,
                f"{detail}; rebuilt from {len(again.ids)} stored readings{unusable}",
                f"{_collection_of(scope)}/{wid}",
                document_bytes(doc),
                now,
            )
        )
        return again


def _collection_of(scope: str) -> str:
    return contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS

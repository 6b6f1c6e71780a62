"""`iot readings migrate` (revision 3 reading documents -> revision 4 buckets) and `iot readings show`
(one device's readings in a time range): the `readings` collection through iot/readings_store.py, and
iot/readings_migration.py for the migration."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from iot import contract, log, readings_migration, readings_store
from iot.reach import check_mongo

from .errors import BackendError

_log = log.get("backend.readings")


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    check_mongo(uri)
    return MongoClient(uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=120_000, tz_aware=True)


def migrate(uri: str) -> readings_migration.Migrated:
    """Rewrite every revision 3 reading document as revision 4 buckets, logging progress per chunk."""
    client = _client(uri)
    try:
        db = client.get_default_database(default=contract.DEFAULT_DATABASE)
        _log.info("readings_migration_started", chunk=readings_migration.MIGRATE_CHUNK)
        started = time.monotonic()

        def progress(done: readings_migration.Migrated) -> None:
            if not done.chunks:
                _log.info(
                    "readings_marks_set",
                    partitions=done.marked,
                    seconds=round(time.monotonic() - started, 1),
                    action="the revision 4 backend may start now; the migration goes on beside it",
                )
                return
            _log.info(
                "readings_migrating",
                readings=done.readings,
                buckets=done.buckets,
                seconds=round(done.seconds, 1),
            )

        done = readings_migration.migrate(db, progress)
    except PyMongoError as exc:
        raise BackendError(
            f"migrating {contract.COLL_READINGS} failed: {exc}; run `iot readings migrate` again: it"
            " resumes where it stopped and loses nothing"
        ) from exc
    finally:
        client.close()
    _log.info(
        "readings_migrated",
        readings=done.readings,
        buckets=done.buckets,
        resumed=done.resumed,
        seconds=round(done.seconds, 1),
    )
    return done


def show(uri: str, device: str, last: timedelta, until: datetime | None = None) -> list[dict[str, Any]]:
    """One device's stored readings with `ts` within `last` before `until` (now), oldest first."""
    end = until or datetime.now(UTC)
    end_ms = int(end.timestamp() * 1000)
    start_ms = end_ms - int(last.total_seconds() * 1000)
    client = _client(uri)
    try:
        db = client.get_default_database(default=contract.DEFAULT_DATABASE)
        found = readings_store.in_range(readings_store.collection(db), "device", device, start_ms, end_ms + 1)
    except PyMongoError as exc:
        raise BackendError(f"reading {contract.COLL_READINGS} from MongoDB failed: {exc}") from exc
    finally:
        client.close()
    return sorted(found, key=lambda r: (r["ts"], r["boot"], r["seq"]))


def render(rows: list[dict[str, Any]]) -> str:
    headers = ["ts (UTC)", "boot", "seq", *contract.METRICS, "fw"]
    lines = ["  ".join(headers)]
    for r in rows:
        ts = (
            r["ts"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(r["ts"], datetime)
            else r["ts"]
        )
        values = ["-" if r.get(m) is None else f"{r[m]:.2f}" for m in contract.METRICS]
        lines.append("  ".join([str(ts), str(r.get("boot")), str(r.get("seq")), *values, str(r.get("fw"))]))
    return "\n".join(lines)

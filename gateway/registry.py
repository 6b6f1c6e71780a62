"""Keeps the device registry (MongoDB `devices`, iot/devices/registry.py) current from the boards'
status and health messages, which the gateway receives anyway.

The MQTT thread only parses and merges the newest state per board into a dict; a thread of its own
writes it every `flush_s`, 20 statements per command (FerretDB 1.24 deadlocks on large update
commands, FACTS.md). Updates match `{_id: device, place: place}` and never create a document, so only
provisioned boards are tracked, in the place they were provisioned for. `last_seen` takes only live
messages (a retained copy delivered at subscribe time may be days old) and only moves forward
(`$max`), so several gateways writing the same board agree. While MongoDB is away the newest state
waits in memory (one entry per board) and is written when it is back; readings are never held up.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from typing import Any

import pymongo
from prometheus_client import CollectorRegistry, Counter
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from iot import contract, log

__all__ = ["RegistryWriter"]

_log = log.get("gateway.registry")
_BATCH = 20
_HEALTH_MAX_BYTES = 4096
_TEXT_MAX = 64
_ONLINE = {contract.STATUS_ONLINE: True, contract.STATUS_OFFLINE: False, contract.STATUS_SAFE_MODE: False}

Key = tuple[str, str]  # (place, device)


def _board(topic: str) -> Key | None:
    parts = topic.split("/")
    if len(parts) != 4 or not all(contract.ID_PATTERN.fullmatch(p) for p in parts[1:3]):
        return None
    return parts[1], parts[2]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def status_fields(payload: bytes) -> dict[str, Any] | None:
    """What a status message says for the registry; None for anything that is not a status."""
    text = payload[:32].decode("utf-8", errors="replace").strip()
    if text not in _ONLINE:
        return None
    return {"status": text, "online": _ONLINE[text]}


def health_fields(payload: bytes) -> dict[str, Any] | None:
    """The registry's fields of a health message (firmware version, boot, configuration revision,
    update state), each only when present and of its type; None when it is not a health message."""
    if len(payload) > _HEALTH_MAX_BYTES:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested payload (issue 19)
        return None
    if not isinstance(obj, dict):
        return None
    out: dict[str, Any] = {}
    for name in ("fw", contract.HEALTH_UPDATE_STATE):
        value = obj.get(name)
        # is_text: a lone surrogate (JSON "\ud800") cannot be written to MongoDB, and it failed the
        # write of every board pending with it (issue #19).
        if isinstance(value, str) and 0 < len(value) <= _TEXT_MAX and contract.is_text(value):
            out[name] = value
    for name in ("boot", contract.HEALTH_CONFIG_REV):
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < contract.INT64_LIMIT:
            out[name] = value
    return out


class RegistryWriter:
    def __init__(
        self,
        collection: Any,
        registry: CollectorRegistry | None = None,
        flush_s: float = 2.0,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._coll = collection
        self._flush_s = flush_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Key, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)
        self._failing = False
        self.writes = Counter(
            "iot_gateway_registry_writes_total",
            "Device registry updates written to MongoDB (boards not provisioned match nothing)",
            registry=registry,
        )
        self.errors = Counter(
            "iot_gateway_registry_errors_total",
            "Device registry writes that failed (retried with the newest state)",
            registry=registry,
        )

    @classmethod
    def connect(cls, mongo_uri: str, registry: CollectorRegistry | None = None) -> RegistryWriter:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            mongo_uri,
            serverSelectionTimeoutMS=5000,
            connectTimeoutMS=5000,
            socketTimeoutMS=10_000,
            tz_aware=True,
        )
        db = client.get_default_database(default=contract.DEFAULT_DATABASE)
        return cls(db[contract.COLL_DEVICES], registry)

    # --- the MQTT thread ---------------------------------------------------------------------

    def status(self, topic: str, payload: bytes, retained: bool) -> None:
        key = _board(topic)
        fields = status_fields(payload) if key else None
        if key is not None and fields is not None:
            self._merge(key, fields, retained)

    def health(self, topic: str, payload: bytes, retained: bool) -> None:
        key = _board(topic)
        fields = health_fields(payload) if key else None
        if key is not None and fields is not None:
            self._merge(key, {**fields, "health_at": self._clock()}, retained)

    def _merge(self, key: Key, fields: dict[str, Any], retained: bool) -> None:
        with self._lock:
            entry = self._pending.setdefault(key, {"set": {}, "seen": None})
            entry["set"].update(fields)
            if not retained:
                entry["seen"] = self._clock()

    # --- the writer thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending (bounded by `timeout`) and stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self._flush_guarded()
        self._flush_guarded()

    def _flush_guarded(self) -> None:
        # MongoDB being away is handled in flush(); anything else is a bug of ours, and must not end
        # this thread (the registry would stop for good while the gateway runs on).
        try:
            self.flush()
        except Exception as exc:
            self.errors.inc()
            _log.error(
                "registry_flush_failed",
                error=repr(exc)[:300],
                action="the gateway's own bug: please report with this line; the registry misses this "
                "round's updates and goes on",
            )

    def flush(self) -> int:
        """Write the pending state; how many updates were written. On failure the state goes back
        (anything newer that arrived meanwhile wins) and the next flush tries again."""
        with self._lock:
            pending, self._pending = self._pending, {}
        items = list(pending.items())
        written = 0
        for i in range(0, len(items), _BATCH):
            batch = items[i : i + _BATCH]
            try:
                self._coll.bulk_write([_update(key, entry) for key, entry in batch], ordered=False)
            except PyMongoError as exc:
                self.errors.inc()
                self._put_back(items[i:])
                if not self._failing:
                    self._failing = True
                    _log.warning(
                        "registry_write_failed",
                        error=str(exc).splitlines()[0][:200],
                        boards_waiting=len(items) - i,
                        action="readings are unaffected; the registry catches up once MongoDB "
                        "(IOT_MONGO_URI) answers",
                    )
                return written
            written += len(batch)
            self.writes.inc(len(batch))
        if self._failing:
            self._failing = False
            _log.info("registry_writes_resumed", written=written)
        return written

    def _put_back(self, items: list[tuple[Key, dict[str, Any]]]) -> None:
        with self._lock:
            for key, old in items:
                new = self._pending.get(key)
                if new is None:
                    self._pending[key] = old
                    continue
                new["set"] = {**old["set"], **new["set"]}
                new["seen"] = new["seen"] or old["seen"]


def _update(key: Key, entry: dict[str, Any]) -> UpdateOne:
    place, device = key
    change: dict[str, Any] = {}
    if entry["set"]:
        change["$set"] = entry["set"]
    if entry["seen"] is not None:
        change["$max"] = {"last_seen": entry["seen"]}
    return UpdateOne({"_id": device, "place": place}, change)

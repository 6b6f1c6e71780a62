"""The device registry: MongoDB collection `devices`, one document per provisioned board.

    _id           device id
    place         where it is (its topics' {place})
    created_at    when `iot devices add` (or a fleet) provisioned it
    online        its retained status is `online` (false: offline, safe mode, or never seen)
    status        that status as the board last said it (null until it did)
    last_seen     the gateway last received a live status or health message from it (retained
                  copies delivered at a gateway's subscribe do not count: they may be days old)
    fw            firmware version, from health
    boot          boot counter, from health
    config_rev    applied configuration revision, from health (boards with remote configuration)
    update_state  state of an over-the-air update, from health (boards with OTA)
    health_at     when the last health message was received
    config        the remote configuration the operator wants: {rev, set, trial_s, at, sets, refused}
                  (`iot config set`, fleetops/remote.py; kept when the board is re-provisioned).
                  Stored apart, in `device_configs` (`_id` = device), and merged in by `get`/`all`.

`iot devices` writes the identity fields; the gateway keeps the rest current (gateway/registry.py)
with updates that match a document by `_id` and `place` and never create one: a board that is not
provisioned, or was removed, has no document.

Each document has one writer at a time: the gateway writes `devices` all the time, the operator's
commands write `device_configs`. FerretDB 1.24 updates a document by reading and rewriting it whole,
so two writers of one document lost each other's changes (the wanted config went back to an older
revision while the gateway wrote the board's health: tests/gateway/test_registry.py). A `config`
field left in `devices` by an older version is still read until the next `iot config set` moves it.

Stored documents are input: a wanted config that is not one (`wanted_config`) is left out of the
merged document, which says why in `config_unreadable` instead, and is logged once per read; listing
the fleet goes on, and `iot config set` refuses that board rather than guess its next revision.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import pymongo
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from iot import contract, log
from iot.errors import IotError

__all__ = ["STATE_FIELDS", "UNREADABLE", "Registry", "RegistryError", "wanted_config"]

_log = log.get("devices")
# The merged document's field that says why its wanted config was left out.
UNREADABLE: Final = "config_unreadable"

# Reset when a board is (re-)provisioned: they describe what it reported, not who it is.
STATE_FIELDS: Mapping[str, Any] = {
    "online": False,
    "status": None,
    "last_seen": None,
    "fw": None,
    "boot": None,
    contract.HEALTH_CONFIG_REV: None,
    contract.HEALTH_UPDATE_STATE: None,
    "health_at": None,
}


class RegistryError(IotError):
    """MongoDB did not answer or refused a registry operation."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def wanted_config(config: Any) -> str:
    """Why `config` (a stored wanted config: {rev, set, trial_s, at, sets, refused}) is not one, or ''
    if it is. Only what `iot config set` and `show` build on is checked."""
    if not isinstance(config, Mapping):
        return f"config is {type(config).__name__}, not a document"
    if not _count(config.get("rev")) or config["rev"] < 1:
        return f"config.rev is {config.get('rev')!r}, not a revision number >= 1"
    if not isinstance(config.get("set"), Mapping):
        return f"config.set is {type(config.get('set')).__name__}, not a document of fields"
    sets = config.get("sets", {})
    if not isinstance(sets, Mapping) or not all(
        isinstance(r, str) and r.isdigit() and isinstance(v, Mapping) for r, v in sets.items()
    ):
        return "config.sets is not a document of revision -> fields"
    refused = config.get("refused")
    if refused is not None and not (isinstance(refused, Mapping) and _count(refused.get("rev"))):
        return f"config.refused is {refused!r:.80}, not {{rev, error}}"
    return ""


class Registry:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self._coll = collection
        self._configs: Collection[dict[str, Any]] = collection.database[contract.COLL_DEVICE_CONFIGS]

    @classmethod
    def connect(cls, uri: str, timeout_s: float = 5.0) -> Registry:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri,
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000),
            socketTimeoutMS=int(timeout_s * 1000),
            tz_aware=True,
        )
        db = client.get_default_database(default=contract.DEFAULT_DATABASE)
        return cls(db[contract.COLL_DEVICES])

    def close(self) -> None:
        self._coll.database.client.close()

    def _do(self, what: str, action: Any) -> Any:
        try:
            return action()
        except PyMongoError as exc:
            raise RegistryError(f"device registry ({what}): {str(exc).splitlines()[0]}") from None

    def ping(self) -> None:
        self._do("ping", lambda: self._coll.database.command("ping"))

    def add(self, device: str, place: str) -> None:
        """Record the board as provisioned in `place`, with no reported state yet (again from scratch
        when it was there before: a re-provisioned board must report anew)."""
        self._do(
            "add",
            lambda: self._coll.update_one(
                {"_id": device},
                {"$set": {"place": place, **STATE_FIELDS}, "$setOnInsert": {"created_at": _now()}},
                upsert=True,
            ),
        )

    def get(self, device: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._do("get", lambda: self._coll.find_one({"_id": device}))
        if found is not None:
            wanted = self._do("get", lambda: self._configs.find_one({"_id": device}))
            _merge(found, wanted)
        return found

    def all(self) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = self._do("list", lambda: list(self._coll.find({})))
        wanted = {w.get("_id"): w for w in self._do("list", lambda: list(self._configs.find({})))}
        for doc in docs:
            _merge(doc, wanted.get(doc["_id"]))
        return sorted(docs, key=lambda d: (str(d.get("place")), str(d["_id"])))

    def set_config(self, device: str, config: Mapping[str, Any]) -> None:
        """The remote configuration the operator wants for the board (`iot config set`): `config`."""
        self._do(
            "config",
            lambda: self._configs.replace_one(
                {"_id": device}, {"_id": device, "config": dict(config)}, upsert=True
            ),
        )

    def note_config_refused(self, device: str, rev: int, error: str) -> None:
        """The board refused revision `rev` of its remote configuration (`error`, from its health)."""
        self._do(
            "config",
            lambda: self._configs.update_one(
                {"_id": device, "config.rev": rev}, {"$set": {"config.refused": {"rev": rev, "error": error}}}
            ),
        )

    def remove(self, device: str) -> bool:
        result = self._do("remove", lambda: self._coll.delete_one({"_id": device}))
        self._do("remove", lambda: self._configs.delete_one({"_id": device}))
        return bool(result.deleted_count)


def _merge(doc: dict[str, Any], wanted: Mapping[str, Any] | None) -> None:
    """The board's wanted config (its `device_configs` document, else a legacy `config` field) into
    `doc` as `config`, or why it is unreadable as UNREADABLE."""
    if wanted is not None:
        where = f"{contract.COLL_DEVICE_CONFIGS} {{_id: {doc['_id']!r}}}"
        config = wanted.get("config")
    elif "config" in doc:
        where = f"{contract.COLL_DEVICES} {{_id: {doc['_id']!r}}}.config"
        config = doc["config"]
    else:
        return
    why = wanted_config(config)
    if not why:
        doc["config"] = config
        return
    doc.pop("config", None)
    doc[UNREADABLE] = f"{where}: {why}"
    _log.warning(
        "device_config_unreadable",
        device=doc["_id"],
        document=where,
        error=why,
        action="`iot config set` refuses this board until the document is repaired or deleted"
        " (after a delete, the next set starts after the revision the board runs)",
    )

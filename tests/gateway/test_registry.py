"""The device registry kept current by the gateway from status and health (gateway/registry.py), on
the stack's MongoDB, in a database of the test's own."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from prometheus_client import CollectorRegistry

from gateway.registry import RegistryWriter
from iot import contract
from iot.devices.registry import Registry
from iot.harness.stack import private_ferretdb
from tests.gateway.conftest import GatewayFactory, Publisher
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration
MONGO = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"]).rsplit("/", 1)[0]


@pytest.fixture
def database() -> Iterator[tuple[str, Any]]:
    name = unique("gwreg").replace("-", "_")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO, tz_aware=True)
    yield f"{MONGO}/{name}", client[name]
    client.drop_database(name)
    client.close()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def test_status_and_health_keep_a_provisioned_board_current(database: tuple[str, Any]) -> None:
    _uri, db = database
    Registry(db[contract.COLL_DEVICES]).add("k1", "kitchen")
    clock = Clock()
    writer = RegistryWriter(db[contract.COLL_DEVICES], CollectorRegistry(), clock=clock)
    # Retained copies (what a gateway gets at subscribe time) set the state, not last_seen.
    writer.status("sensors/kitchen/k1/status", b"online", retained=True)
    writer.health("sensors/kitchen/k1/health", b'{"fw": "1.2.0", "boot": 7, "config_rev": 3}', retained=True)
    assert writer.flush() == 1
    doc = db[contract.COLL_DEVICES].find_one({"_id": "k1"})
    assert doc["online"] is True and doc["status"] == "online"
    assert (doc["fw"], doc["boot"], doc["config_rev"]) == ("1.2.0", 7, 3)
    assert doc["last_seen"] is None
    # Live messages move last_seen, never backwards.
    clock.now += dt.timedelta(seconds=30)
    writer.health("sensors/kitchen/k1/health", b'{"fw": "1.3.0", "update_state": "trial"}', retained=False)
    writer.status("sensors/kitchen/k1/status", b"offline", retained=False)
    writer.flush()
    doc = db[contract.COLL_DEVICES].find_one({"_id": "k1"})
    assert doc["online"] is False and doc["fw"] == "1.3.0" and doc["update_state"] == "trial"
    assert doc["boot"] == 7, "a field the message lacks is kept"
    assert doc["last_seen"] == clock.now
    later = clock.now
    clock.now -= dt.timedelta(seconds=10)  # another gateway, a little behind
    writer.status("sensors/kitchen/k1/status", b"online", retained=False)
    writer.flush()
    assert db[contract.COLL_DEVICES].find_one({"_id": "k1"})["last_seen"] == later


def test_unprovisioned_boards_other_places_and_garbage_change_nothing(database: tuple[str, Any]) -> None:
    _uri, db = database
    Registry(db[contract.COLL_DEVICES]).add("k1", "kitchen")
    before = db[contract.COLL_DEVICES].find_one({"_id": "k1"})
    writer = RegistryWriter(db[contract.COLL_DEVICES], CollectorRegistry())
    writer.status("sensors/garage/k1/status", b"online", retained=False)  # another place: not this board
    writer.status("sensors/kitchen/stranger/status", b"online", retained=False)
    writer.health("sensors/kitchen/k1/health", b"[" * 3000, retained=False)  # RecursionError in json
    writer.health("sensors/kitchen/k1/health", b"[1, 2]", retained=False)
    writer.health("sensors/kitchen/k1/health", b'{"fw": "' + b"x" * 5000 + b'"}', retained=False)
    writer.status("sensors/kitchen/k1/status", b"maybe", retained=False)
    writer.status("sensors/kitchen/k1/status", b"", retained=True)  # a removed board's cleared status
    writer.flush()
    assert db[contract.COLL_DEVICES].find_one({"_id": "k1"}) == before
    assert db[contract.COLL_DEVICES].count_documents({}) == 1, "an update created a document"


def test_a_registry_outage_keeps_the_newest_state_and_writes_it_later(tmp_path: Path) -> None:
    with private_ferretdb(tmp_path / "stack") as stack:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            stack.mongo_uri, serverSelectionTimeoutMS=500, tz_aware=True
        )
        coll = client.get_default_database()[contract.COLL_DEVICES]
        Registry(coll).add("k1", "kitchen")
        metrics = CollectorRegistry()
        writer = RegistryWriter(coll, metrics)
        stack.down(["ferretdb"])
        writer.status("sensors/kitchen/k1/status", b"online", retained=False)
        writer.health("sensors/kitchen/k1/health", b'{"fw": "1.0"}', retained=False)
        assert writer.flush() == 0
        assert metrics.get_sample_value("iot_gateway_registry_errors_total") == 1.0
        writer.health("sensors/kitchen/k1/health", b'{"fw": "2.0"}', retained=False)  # newer, meanwhile
        stack.up(["ferretdb"])
        assert wait_for(writer.flush, 30, "the registry write once FerretDB is back") == 1
        doc = coll.find_one({"_id": "k1"})
        assert doc is not None and doc["online"] is True and doc["fw"] == "2.0"
        client.close()


def test_the_gateway_keeps_the_registry_current(
    gateways: GatewayFactory, publisher: Publisher, database: tuple[str, Any]
) -> None:
    uri, db = database
    device = unique("reg")
    Registry(db[contract.COLL_DEVICES]).add(device, gateways.place)
    status = contract.status_topic(gateways.place, device)
    health = contract.health_topic(gateways.place, device)
    gateway = gateways(IOT_MONGO_URI=uri)
    try:
        publisher.publish_raw(status, b"online", retain=True)
        publisher.publish_raw(health, b'{"fw": "0.9.1", "boot": 4, "config_rev": 2}', retain=True)

        def current() -> dict[str, Any] | None:
            doc: dict[str, Any] | None = db[contract.COLL_DEVICES].find_one({"_id": device})
            return doc if doc and doc.get("online") and doc.get("config_rev") == 2 else None

        doc = wait_for(current, 20, "the registry to show the board online with config 2")
        assert doc["fw"] == "0.9.1" and doc["boot"] == 4 and doc["last_seen"] is not None
        assert gateway.metric("iot_gateway_registry_writes_total")
    finally:
        publisher.publish_raw(status, b"", retain=True)
        publisher.publish_raw(health, b"", retain=True)


def test_a_hostile_health_message_costs_no_other_board_its_update(database: tuple[str, Any]) -> None:
    # A lone surrogate in `fw` is valid JSON; BSON cannot encode it, and the whole round of pending
    # updates (every board's) failed with it (issue #19).
    _uri, db = database
    registry = Registry(db[contract.COLL_DEVICES])
    registry.add("k1", "kitchen")
    registry.add("k2", "kitchen")
    writer = RegistryWriter(db[contract.COLL_DEVICES], CollectorRegistry())
    writer.health("sensors/kitchen/k1/health", b'{"fw": "1.2.0", "boot": 7}', retained=False)
    writer.health(
        "sensors/kitchen/k2/health", b'{"fw": "\\ud800", "update_state": "a\\udc00", "boot": 8}', False
    )
    assert writer.flush() == 2
    k1, k2 = (db[contract.COLL_DEVICES].find_one({"_id": d}) for d in ("k1", "k2"))
    assert (k1["fw"], k1["boot"]) == ("1.2.0", 7)
    assert k2["boot"] == 8 and k2.get("fw") is None and k2.get("update_state") is None


def test_the_operators_wanted_config_survives_the_gateways_updates(database: tuple[str, Any]) -> None:
    """`iot config set` and the gateway write the same board's registry at the same time. FerretDB 1.24
    updates a document by reading and rewriting it whole, so the two writers of one document lost each
    other's changes: the wanted config went back to an older revision (seen in a rig run; 155 of 1,018
    config writes reverted by hand), and the next `iot config set` built on it."""
    _uri, db = database
    registry = Registry(db[contract.COLL_DEVICES])
    registry.add("k1", "kitchen")
    writer = RegistryWriter(db[contract.COLL_DEVICES], CollectorRegistry())
    stop = threading.Event()

    def gateway() -> None:  # a board's health and status, as fast as the gateway can write them
        boot = 0
        while not stop.is_set():
            boot += 1
            writer.health("sensors/kitchen/k1/health", b'{"fw": "1.0", "boot": %d}' % boot, retained=False)
            writer.status("sensors/kitchen/k1/status", b"online", retained=False)
            writer.flush()

    thread = threading.Thread(target=gateway, daemon=True)
    thread.start()
    reverted: list[tuple[int, int]] = []
    try:
        for rev in range(1, 201):
            registry.set_config("k1", {"rev": rev, "set": {"interval_s": rev}})
            seen = (registry.get("k1") or {}).get("config", {}).get("rev")
            if seen != rev:
                reverted.append((rev, seen))
    finally:
        stop.set()
        thread.join(30)
    final = (registry.get("k1") or {}).get("config", {}).get("rev")
    assert not reverted and final == 200, f"reverted (set, read back): {reverted[:10]}, final {final}"
    doc = registry.get("k1") or {}
    assert doc["online"] is True and doc["boot"] > 1, "the gateway's writes took effect too"

"""Acceptance: the documents in MongoDB equal what the boards published, window by window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from iot import contract
from tests.e2e.conftest import HOPPING_S, STEP_S, TUMBLING_S, Run
from tests.e2e.reference import expected_windows
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hil]
KINDS = (("tumbling", TUMBLING_S, TUMBLING_S), ("hopping", HOPPING_S, STEP_S))


def valid_readings(run: Run) -> list[dict[str, Any]]:
    return [r for r in run.readings() if contract.reading_id(r["device"], r["boot"], r["seq"]) != run.late_id]


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def assert_window_equals(doc: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert doc["final"] is True, f"{where} is not final"
    assert doc["count"] == want["count"], where
    for metric in contract.METRICS:
        expected = want[metric]
        got = doc.get(metric)
        if expected is None:
            assert not got or got.get("count", 0) == 0, f"{where} {metric}"
            continue
        assert got["count"] == expected["count"], f"{where} {metric} count"
        assert got["mean"] == pytest.approx(expected["mean"], rel=1e-12, abs=1e-9), f"{where} {metric} mean"
        assert got["min"] == expected["min"] and got["max"] == expected["max"], f"{where} {metric} min/max"


@pytest.mark.parametrize(("kind", "size", "step"), KINDS)
def test_sensor_windows_equal_what_the_boards_published(run: Run, kind: str, size: int, step: int) -> None:
    expected = expected_windows(valid_readings(run), "device", size, step)
    assert len(expected) >= 2 * len(run.devices), "the run is too short to span several windows per board"
    coll = run.db[contract.COLL_SENSOR_WINDOWS]

    def all_final() -> bool:
        ids = [contract.window_id(dev, kind, size, start) for dev, start in expected]
        return coll.count_documents({"_id": {"$in": ids}, "final": True}) == len(ids)

    wait_for(all_final, 60, f"every expected {kind} sensor window to be final")
    for (device, start), want in expected.items():
        doc = coll.find_one({"_id": contract.window_id(device, kind, size, start)})
        assert doc is not None
        where = f"sensor window {device} {kind} {start}"
        assert doc["device"] == device and doc["kind"] == kind and doc["size_s"] == size
        assert doc["step_s"] == step and ms(doc["start"]) == start and ms(doc["end"]) == start + size * 1000
        assert doc["place"] == next(r["place"] for r in run.readings() if r["device"] == device)
        assert_window_equals(doc, want, where)
    ours = coll.count_documents({"device": {"$in": run.devices}, "kind": kind})
    assert ours == len(expected), "the backend wrote windows no published reading falls into"


@pytest.mark.parametrize(("kind", "size", "step"), KINDS)
def test_place_windows_equal_what_the_boards_published(run: Run, kind: str, size: int, step: int) -> None:
    expected = expected_windows(valid_readings(run), "place", size, step)
    coll = run.db[contract.COLL_PLACE_WINDOWS]

    def all_final() -> bool:
        ids = [contract.window_id(place, kind, size, start) for place, start in expected]
        return coll.count_documents({"_id": {"$in": ids}, "final": True}) == len(ids)

    wait_for(all_final, 60, f"every expected {kind} place window to be final")
    for (place, start), want in expected.items():
        doc = coll.find_one({"_id": contract.window_id(place, kind, size, start)})
        assert doc is not None
        assert doc["place"] == place and ms(doc["start"]) == start
        assert set(doc["devices"]) == want["devices"]
        assert_window_equals(doc, want, f"place window {place} {kind} {start}")


def test_every_published_reading_is_stored_exactly_once(run: Run) -> None:
    published = [r for r in valid_readings(run)]
    distinct = {contract.reading_id(r["device"], r["boot"], r["seq"]) for r in published}
    assert len(published) > len(distinct), "the run should have delivered at least one duplicate"
    coll = run.db[contract.COLL_READINGS]
    wait_for(
        lambda: coll.count_documents({"_id": {"$in": sorted(distinct)}}) == len(distinct),
        30,
        "every distinct reading in the readings collection",
    )
    stored = {d["_id"] for d in coll.find({"device": {"$in": run.devices}}, {"_id": 1})}
    assert stored - {run.late_id} == distinct
    sample = coll.find_one({"_id": sorted(distinct)[0]})
    assert (
        sample is not None
        and isinstance(sample["ts"], datetime)
        and isinstance(sample["received_at"], datetime)
    )


def test_bad_and_late_input_is_dead_lettered_with_its_reason(run: Run) -> None:
    reasons = {(r["topic"], r["reason"]) for r in run.dlq}
    assert (run.injected_bad_topic, contract.REASON_MALFORMED_JSON) in reasons
    assert any(reason == contract.REASON_LATE for _topic, reason in reasons), run.dlq

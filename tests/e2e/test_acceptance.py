"""Acceptance: the documents in MongoDB equal what the boards published, window by window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from iot import contract, readings_store
from iot.harness.oracle import as_comparable, expected_windows
from tests.e2e.conftest import HOPPING_S, STEP_S, TUMBLING_S, Run
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hil]
KINDS = ("tumbling", "hopping")


def valid_readings(run: Run) -> list[dict[str, Any]]:
    return [r for r in run.readings() if contract.reading_id(r["device"], r["boot"], r["seq"]) != run.late_id]


def expected(run: Run, scope: str, kind: str) -> dict[str, dict[str, Any]]:
    docs = expected_windows(valid_readings(run), scope, TUMBLING_S * 1000, HOPPING_S * 1000, STEP_S * 1000)
    return {i: d for i, d in docs.items() if d["kind"] == kind}


def assert_stored_windows_equal(coll: Any, want: dict[str, dict[str, Any]], owner: dict[str, Any]) -> None:
    """Every expected window is in MongoDB, final, and equal to the oracle field by field; and the
    backend wrote no window of this run's boards that no published reading falls into."""

    def settled() -> bool:
        got = {d["_id"]: d for d in coll.find({"_id": {"$in": sorted(want)}})}
        return all(i in got and got[i]["final"] and got[i]["count"] == w["count"] for i, w in want.items())

    wait_for(settled, 60, f"every expected {coll.name} window final with all its readings")
    for window_id, doc in want.items():
        stored = coll.find_one({"_id": window_id})
        assert stored is not None
        assert as_comparable(stored) == doc, window_id
    ours = coll.count_documents({**owner, "kind": next(iter(want.values()))["kind"]})
    assert ours == len(want), f"the backend wrote {coll.name} no published reading falls into"


@pytest.mark.parametrize("kind", KINDS)
def test_sensor_windows_equal_what_the_boards_published(run: Run, kind: str) -> None:
    want = expected(run, "sensor", kind)
    assert len(want) >= 2 * len(run.devices), "the run is too short to span several windows per board"
    assert_stored_windows_equal(run.db[contract.COLL_SENSOR_WINDOWS], want, {"device": {"$in": run.devices}})


@pytest.mark.parametrize("kind", KINDS)
def test_place_windows_equal_what_the_boards_published(run: Run, kind: str) -> None:
    want = expected(run, "place", kind)
    assert_stored_windows_equal(
        run.db[contract.COLL_PLACE_WINDOWS], want, {"place": {"$in": list(run.places)}}
    )


def test_every_published_reading_is_stored_exactly_once(run: Run) -> None:
    published = [r for r in valid_readings(run)]
    distinct = {contract.reading_id(r["device"], r["boot"], r["seq"]) for r in published}
    assert len(published) > len(distinct), "the run should have delivered at least one duplicate"
    coll = readings_store.collection(run.db)
    wait_for(
        lambda: len(readings_store.find(coll, distinct)) == len(distinct),
        30,
        "every distinct reading in the readings collection",
    )
    held = [d["_id"] for d in readings_store.every_copy(coll, run.devices)]
    assert len(held) == len(set(held)), "a reading held twice"
    assert set(held) - {run.late_id} == distinct
    sample = readings_store.find(coll, [sorted(distinct)[0]]).get(sorted(distinct)[0])
    assert (
        sample is not None
        and isinstance(sample["ts"], datetime)
        and isinstance(sample["received_at"], datetime)
    )


def test_bad_and_late_input_is_dead_lettered_with_its_reason(run: Run) -> None:
    reasons = {(r["topic"], r["reason"]) for r in run.dlq}
    assert (run.injected_bad_topic, contract.REASON_MALFORMED_JSON) in reasons
    assert any(reason == contract.REASON_LATE for _topic, reason in reasons), run.dlq

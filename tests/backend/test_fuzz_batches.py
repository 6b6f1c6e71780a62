"""Fuzzing the backend's batch path without services (tests/backend/memory.py): Kafka records into the
backend and stored documents into the amendment path, with crashes in between.

Hypothesis writes scripts of good readings (many boots, gaps filled out of order), copies of them
(identical, re-stamped by the gateway, or conflicting), poison records of every kind, corruptions of
stored window documents, and crashes between a batch's outputs and its offsets. The de-duplication
memory is bounded to 2 boots and 3 seq ranges here, so what it forgets is asked of the `readings`
store all the time. The invariant, whatever the script: every good reading stored once and counted
once in every window it belongs to (the oracle), every bad input in the DLQ with a reason and its
source, nothing else in the DLQ, and no exception out of the batch path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import windows
from backend.records import PLACE, SENSOR
from iot import contract
from iot.harness.oracle import as_comparable, expected_windows

from .memory import SOURCE, Pipeline

pytestmark = pytest.mark.unit
T0 = 1_750_000_000_000
DEVICES = ("d-a", "d-b", "d-c")
PLACES = {"d-a": "p-1", "d-b": "p-1", "d-c": "p-2"}


@pytest.fixture(scope="module", autouse=True)
def small_dedup_memory() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(windows, "MAX_BOOTS_PER_DEVICE", 2)
        mp.setattr(windows, "MAX_RANGES_PER_BOOT", 3)
        yield


def reading(
    device: str,
    boot: int,
    seq: int,
    dt: int,
    temperature: float | None,
    valid: bool,
    ids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A good reading of one of DEVICES; `ids` renames devices and places (the real-stack test gives
    each example ids of its own)."""
    ids = ids or {}
    return {
        "v": 1,
        "device": ids.get(device, device),
        "place": ids.get(PLACES[device], PLACES[device]),
        "boot": boot,
        "seq": seq,
        "ts": T0 + dt,
        "time_valid": valid,
        "temperature": temperature,
        "humidity": 40.0 + seq % 7,
        "pressure": None if seq % 5 == 0 else 1000.25,
        "luminosity": float(boot),
        "fw": "f",
    }


def record(r: dict[str, Any]) -> bytes:
    return contract.encode({**r, "received_at": r["ts"] + 5})


# --- the script -----------------------------------------------------------------------------------------
temperatures = st.one_of(st.none(), st.floats(-40, 85, allow_nan=False).map(lambda t: round(t, 3)))
good_step = st.tuples(
    st.just("good"),
    st.sampled_from(DEVICES),
    st.integers(0, 5),  # boot
    st.integers(0, 12),  # seq
    st.integers(0, 20_000),  # event time offset
    temperatures,
    st.booleans(),
)
again_step = st.tuples(st.sampled_from(["same", "restamp", "conflict"]), st.integers(0, 10_000))
POISON = (
    "bytes",
    "nested",
    "surrogate",
    "newline_id",
    "missing",
    "wrong_type",
    "big_received_at",
    "tombstone",
    "key_mismatch",
    "nan",
    "not_object",
)
poison_step = st.tuples(
    st.just("poison"), st.sampled_from(POISON), st.sampled_from(DEVICES), st.binary(max_size=64)
)
CORRUPTIONS = (
    "count_string",
    "metric_missing",
    "sums_wrong_type",
    "devices_not_list",
    "mean_off",
    "final_string",
    "offset_string",
    "start_moved",
    "num_not_decimal",
)
corrupt_step = st.tuples(st.just("corrupt"), st.sampled_from(CORRUPTIONS), st.integers(0, 10_000))
control_step = st.tuples(st.sampled_from(["run", "crash"]), st.integers(1, 6))
steps = st.lists(
    st.one_of(good_step, good_step, good_step, again_step, poison_step, corrupt_step, control_step),
    min_size=1,
    max_size=70,
)


@dataclass
class Expect:
    good: list[dict[str, Any]] = field(default_factory=list)  # the first copy of each id, in order
    first: dict[str, dict[str, Any]] = field(default_factory=dict)
    produced: list[dict[str, Any]] = field(default_factory=list)  # every good record produced
    bad: set[tuple[int, int]] = field(default_factory=set)  # (partition, offset) of poison
    conflicts: set[tuple[int, int]] = field(default_factory=set)
    corrupted: dict[str, int] = field(default_factory=dict)  # window _id -> len(produced) then
    since: dict[str, int] = field(default_factory=dict)  # reading id -> len(produced) when first sent


def claim(r: dict[str, Any]) -> tuple[Any, ...]:
    """What the board said (the gateway replaces ts when time_valid is false)."""
    return (
        r["place"],
        r["temperature"],
        r["humidity"],
        r["pressure"],
        r["luminosity"],
        r["fw"],
        r["time_valid"],
        r["ts"] if r["time_valid"] else None,
    )


def poison_value(
    kind: str, device: str, junk: bytes, ids: Mapping[str, str] | None = None
) -> tuple[bytes | None, bytes]:
    """A record that is no reading, and its key."""
    ids = ids or {}
    base = reading(device, 0, 0, 0, 20.0, True, ids)
    key = base["device"].encode()
    device = base["device"]
    if kind == "bytes":
        return junk + b"\xff", key
    if kind == "nested":
        return b"[" * 3000 + b"]" * 3000, key
    if kind == "surrogate":
        return json.dumps({**base, "fw": "\ud800", "received_at": T0}).encode(), key
    if kind == "newline_id":
        return record({**base, "device": device + "\n"}), key + b"\n"
    if kind == "missing":
        return record({k: v for k, v in base.items() if k != "seq"}), key
    if kind == "wrong_type":
        return record({**base, "boot": "0"}), key
    if kind == "big_received_at":
        return contract.encode({**base, "received_at": 2**70}), key
    if kind == "tombstone":
        return None, key
    if kind == "key_mismatch":
        other = next(ids.get(d, d) for d in DEVICES if ids.get(d, d) != device)
        return record(base), other.encode()
    if kind == "nan":
        return record(base).replace(b'"temperature":20.0', b'"temperature":NaN'), key
    return b"[1,2,3]", key


def corrupt(doc: dict[str, Any], how: str) -> None:
    """Damage a stored window document; a document damaged before (nothing amended it since) is
    damaged once more, as a second bad write would."""
    if how == "count_string":
        doc["temperature"]["count"] = "three"
    elif how == "metric_missing":
        doc.pop("humidity", None)
    elif how == "sums_wrong_type":
        doc["sums"]["temperature"] = 5
    elif how == "devices_not_list":
        doc["devices" if "devices" in doc else "device"] = 42
    elif how == "mean_off":
        humidity = doc.setdefault("humidity", {"mean": None})
        humidity["mean"] = (humidity.get("mean") or 0.0) + 0.5
    elif how == "final_string":
        doc["final"] = "yes"
    elif how == "offset_string":
        doc["offset"] = "7"
    elif how == "start_moved":
        doc["start"] += 1
    else:
        doc["sums"]["pressure"] = {"num": "1.5", "exp": 0}


def play(script: list[tuple[Any, ...]]) -> tuple[Pipeline, Expect]:
    pipe = Pipeline()
    want = Expect()
    for step in script:
        kind = step[0]
        if kind == "good":
            _, device, boot, seq, dt, temperature, valid = step
            r = reading(device, boot, seq, dt, temperature, valid)
            _good(pipe, want, r)
        elif kind in ("same", "restamp", "conflict") and want.produced:
            r = dict(want.produced[step[1] % len(want.produced)])
            if kind == "restamp":
                r["time_valid"] = False  # the gateway's receive time: not the board's claim
                r["ts"] = r["ts"] + 333
            elif kind == "conflict":
                t = r["temperature"]
                r["temperature"] = 5.0 if t is None else (t - 1.0 if t > 0 else t + 1.0)
            if kind == "restamp" and want.first[_rid(r)]["time_valid"]:
                r["time_valid"], r["ts"] = True, want.first[_rid(r)]["ts"]  # a plain copy then
            _good(pipe, want, r)
        elif kind == "poison":
            value, key = poison_value(step[1], step[2], step[3])
            msg = pipe.produce(value, key)
            want.bad.add((msg.partition, msg.offset))
        elif kind == "corrupt":
            pipe.run()
            finals = sorted(
                (scope, wid)
                for scope in (SENSOR, PLACE)
                for wid, d in pipe.sink.windows[scope].items()
                if d.get("final") is True
            )
            if finals:
                scope, wid = finals[step[2] % len(finals)]
                corrupt(pipe.sink.windows[scope][wid], step[1])
                pipe.sink.corrupted.add(wid)
                want.corrupted[wid] = len(want.produced)
        elif kind == "run":
            pipe.run()
        elif kind == "crash":
            pipe.run(crash_after=step[1])
    pipe.run()
    pipe.close_all()
    pipe.run()
    return pipe, want


def _rid(r: dict[str, Any]) -> str:
    return contract.reading_id(r["device"], r["boot"], r["seq"])


def _good(pipe: Pipeline, want: Expect, r: dict[str, Any]) -> None:
    msg = pipe.produce(record(r), r["device"].encode())
    want.produced.append(r)
    rid = _rid(r)
    first = want.first.get(rid)
    if first is None:
        want.first[rid] = r
        want.since[rid] = len(want.produced)
        want.good.append(r)
    elif claim(first) != claim(r):
        want.conflicts.add((msg.partition, msg.offset))


def check(pipe: Pipeline, want: Expect) -> None:
    # Every good reading stored once, as first sent.
    assert set(pipe.sink.readings) == set(want.first)
    for rid, r in want.first.items():
        stored = pipe.sink.readings[rid]
        assert {k: stored[k] for k in r} == r, rid
    # Every window the backend last wrote equals the oracle; every window of the oracle exists.
    for scope in (SENSOR, PLACE):
        expected = expected_windows(want.good, scope, 2000, 4000, 2000)
        docs = pipe.sink.windows[scope]
        assert set(docs) == set(expected), scope
        for wid, doc in docs.items():
            if wid in pipe.sink.corrupted:
                # Corrupted after its last write and not written since: no reading may have come
                # for it after the corruption (it would have been amended, from the rebuilt window).
                later = [
                    r
                    for r in want.good
                    if want.since[_rid(r)] > want.corrupted[wid] and wid in _windows_of(r, scope)
                ]
                assert not later, (wid, later)
                continue
            assert as_comparable(doc) == expected[wid], (scope, wid)
    # The DLQ: every bad input with a reason and its source; nothing else.
    dlq = pipe.kafka.dlq
    reasons = set(contract.DLQ_REASONS)
    assert all(rec["reason"] in reasons for rec in dlq)
    sources = {
        (rec["source"]["partition"], rec["source"]["offset"])
        for rec in dlq
        if rec.get("source") and rec["source"]["topic"] == SOURCE
    }
    assert want.bad <= sources, want.bad - sources
    conflicted = {
        (rec["source"]["partition"], rec["source"]["offset"])
        for rec in dlq
        if rec["reason"] == contract.REASON_CONFLICTING_DUPLICATE
    }
    assert conflicted == want.conflicts
    assert sources <= want.bad | want.conflicts, sources - want.bad - want.conflicts
    for rec in dlq:
        if rec["reason"] == contract.REASON_CORRUPT_WINDOW:
            assert json.loads(_payload(rec))["_id"] in want.corrupted
        else:
            assert rec.get("source"), rec
    assert not [r for r in dlq if r["reason"] == contract.REASON_UNPROCESSABLE], "a bug isolated"


def _windows_of(r: dict[str, Any], scope: str) -> set[str]:
    return set(expected_windows([r], scope, 2000, 4000, 2000))


def _payload(rec: dict[str, Any]) -> bytes:
    import base64

    return base64.b64decode(rec["payload_b64"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps)
def test_any_script_stores_every_good_reading_once_and_dead_letters_every_bad_input(
    script: list[tuple[Any, ...]],
) -> None:
    pipe, want = play(script)
    check(pipe, want)


def test_the_oracle_check_fails_when_a_reading_is_lost() -> None:
    # The check above can fail: drop one stored reading and it does.
    pipe, want = play([("good", "d-a", 0, 0, 100, 20.0, True), ("good", "d-a", 0, 1, 200, 21.0, True)])
    check(pipe, want)
    del pipe.sink.readings["d-a:0:1"]
    with pytest.raises(AssertionError):
        check(pipe, want)


def test_many_boots_and_filled_gaps_are_counted_once_through_the_store() -> None:
    # 12 boots, then the oldest again; one boot with gaps filled later: beyond the (small) memory.
    script: list[tuple[Any, ...]] = [
        ("good", "d-b", b, s, b * 1000 + s, 20.0, True) for b in range(6) for s in (0, 1)
    ]
    script += [("same", i) for i in range(4)]
    script += [("good", "d-c", 0, s, 100 + s, 21.0, True) for s in range(0, 12, 2)]
    script += [("run", 1)]
    script += [("good", "d-c", 0, s, 100 + s, 21.0, True) for s in range(1, 12, 2)]
    pipe, want = play(script)
    check(pipe, want)
    assert pipe.batches.metrics.lookups.labels(SENSOR)._value.get() > 0  # the store was asked


def test_a_failing_idle_timer_turn_is_logged_and_leaves_the_persisted_states_the_truth() -> None:
    pipe, _ = play([("good", "d-a", 0, 0, 100, 20.0, True)])
    scope = pipe.batches.scopes[SENSOR]
    scope.engine.state("d-a", 0)  # cached

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in expire")

    scope.engine.expire = broken  # type: ignore[method-assign]
    asyncio.run(pipe.batches.expire(scope, 10**13, {0, 1, 2}, set()))  # raises nothing
    assert pipe.batches.metrics.batch_failures.labels(SENSOR)._value.get() == 1
    assert scope.engine._cache == {}  # read from the changelog again next time

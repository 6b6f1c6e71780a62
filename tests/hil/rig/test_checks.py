"""The rig's window check against a recorded timeline, with no stack: which windows it demands.

The timeline is the one of a failed CI run (19:11 UTC, load ~12 on 2 cores): `flash` stopped the
firmware for 9.3 s, so one whole 5 s tumbling window held no reading and the backend (rightly) made
no document for it; the check demanded it anyway and reported fault_free_windows_missing=1."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from hil.rig.boards import RigBoard
from hil.rig.checks import _published, delivered, expected_windows, latency, windows
from hil.rig.record import FAILED, PASSED
from hil.rig.stack import RigStack
from iot import contract, readings_store

SIZE_S = 5
DEVICE = "hil-test-kitchen"
SINCE = 1_796_000_002.0  # the scenario starts 2 s into a window
UNTIL = SINCE + 35.0
# One reading before the flash, then none for 9.3 s (files copied, reset), then one a second.
READINGS_TS = [SINCE - 0.1] + [SINCE + 9.4 + n for n in range(26)]


@dataclass
class _Message:
    payload: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class _Probe:
    def __init__(self, ts: list[float]) -> None:
        self.msgs = [
            _Message(
                json.dumps(
                    {
                        "device": DEVICE,
                        "boot": 1,
                        "seq": n,
                        "ts": int(t * 1000),
                        "time_valid": True,
                        "temperature": 22.5,
                    }
                ).encode(),
                t + 0.2,
            )
            for n, t in enumerate(ts)
        ]

    def messages(self, kind: str, device: str) -> list[_Message]:
        return self.msgs if (kind, device) == ("reading", DEVICE) else []


def _date(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class _Collection:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def find(
        self, query: dict[str, Any], _projection: Any = None, batch_size: int = 0
    ) -> list[dict[str, Any]]:
        """The equality and `$in` filters the checks send."""
        del batch_size
        return [
            d
            for d in self.docs
            if all(d.get(k) in v["$in"] if isinstance(v, dict) else d.get(k) == v for k, v in query.items())
        ]


class _Stack:
    """What windows() reads of a RigStack: the rig's window size, the probe, the database."""

    def __init__(self, reading_ts: list[float], window_starts: set[int]) -> None:
        self.rig = type("Rig", (), {"stack": type("StackSpec", (), {"tumbling_s": SIZE_S})()})()
        self.probe = _Probe(reading_ts)
        readings = [
            {
                "device": DEVICE,
                "place": "kitchen",
                "boot": 1,
                "seq": n,
                "ts": int(t * 1000),
                "received_at": int(t * 1000),
                "temperature": 22.5,
            }
            for n, t in enumerate(reading_ts)
        ]
        # As the backend stores them (iot/readings_store.py), dates as the client reads them back.
        buckets = readings_store.pack((r, 0) for r in readings)
        for b in buckets:
            b["start"], b["end"] = _date(int(b["start"])), _date(int(b["end"]))
            b["ts"] = [_date(int(t)) for t in b["ts"]]
            b["received_at"] = [_date(int(t)) for t in b["received_at"]]
        wins = [
            {
                "device": DEVICE,
                "kind": "tumbling",
                "start": _date(s),
                "end": _date(s + SIZE_S * 1000),
                "final": True,
                "temperature": {"mean": 22.5},
            }
            for s in sorted(window_starts)
        ]
        self.db = {
            contract.COLL_READINGS: _Collection(buckets),
            contract.COLL_SENSOR_WINDOWS: _Collection(wins),
        }


class _Sensors:
    """A constant environment that never changed."""

    def near_change(self, _ts: float) -> bool:
        return False

    def expected(self, _ts: float) -> dict[str, float]:
        return {"temperature": 22.5}


class _Board:
    device = DEVICE
    spec = type("Spec", (), {"tolerance": {"temperature": 0.05}})()
    sensors = _Sensors()


def _backend_windows(reading_ts: list[float]) -> set[int]:
    """The windows the backend makes: one per window a reading falls in."""
    size = SIZE_S * 1000
    return {int(t * 1000) // size * size for t in reading_ts}


def _missing(stack: _Stack) -> float:
    out = windows(cast(RigStack, stack), cast(RigBoard, _Board()), SINCE, UNTIL, [], timeout_s=0)
    return next(m.value for m in out if m.name == "fault_free_windows_missing")


def test_a_window_in_which_the_board_measured_nothing_is_not_demanded() -> None:
    # The flash left [since+3, since+8) without a reading: the backend made every other window.
    stack = _Stack(READINGS_TS, _backend_windows(READINGS_TS))
    assert _missing(stack) == 0


def test_a_window_holding_a_reading_that_the_backend_did_not_make_is_still_missing() -> None:
    made = _backend_windows(READINGS_TS)
    made.remove(max(made - {max(made)}))  # drop a window the board measured in
    assert _missing(_Stack(READINGS_TS, made)) == 1


def test_expected_windows_skip_faults_and_windows_without_readings() -> None:
    size = 5000
    measured = [1_000, 11_000, 16_000, 21_000, 26_000]  # nothing in [5000, 10000)
    # A fault over [14 s, 14.5 s] and the 10 s after it touch the windows at 10, 15 and 20 s.
    assert expected_windows(0, 30_000, size, [(14.0, 14.5)], measured) == [0, 25_000]
    assert expected_windows(0, 30_000, size, [], measured) == [0, 10_000, 15_000, 20_000, 25_000]


def test_an_identity_published_with_another_payload_is_a_reused_one_a_resend_is_not() -> None:
    """A board re-sends a reading byte for byte from its outbox; another reading under the same
    (device, boot, seq) (a new firmware numbering its boots or seqs again after an update) is what the
    fleet scenarios' accounting must catch: `ids_reused`."""
    probe = _Probe([SINCE, SINCE + 1])
    first, second = probe.msgs
    probe.msgs.append(_Message(first.payload, first.at + 5))  # re-sent after a lost ack
    later = json.loads(second.payload)
    later["ts"] += 60_000  # measured a minute later under the same identity
    probe.msgs.append(_Message(json.dumps(later).encode(), second.at + 60))

    class _Board:
        device = DEVICE

    class _ProbeStack:
        pass

    stack = _ProbeStack()
    stack.probe = probe  # type: ignore[attr-defined]
    seen, reused = _published(cast(RigStack, stack), cast(RigBoard, _Board()))
    assert set(seen) == {(DEVICE, 1, 0), (DEVICE, 1, 1)}
    assert reused == {(DEVICE, 1, 1)}


class _Publishing(_Probe):
    """A board publishing as the rig looks: one more of its readings each time the probe is read."""

    def __init__(self, ts: list[float]) -> None:
        super().__init__(ts)
        self.shown = 0

    def messages(self, kind: str, device: str) -> list[_Message]:
        self.shown += 1
        return super().messages(kind, device)[: self.shown]


class _Kafka:
    def __init__(self, ts: list[float]) -> None:
        self.held = {(DEVICE, 1, n): [int(t * 1000) + 300] for n, t in enumerate(ts)}

    def snapshot(self) -> dict[tuple[str, int, int], list[int]]:
        return self.held


class _PublishingBoard(_Board):
    def config(self) -> dict[str, Any]:
        return {"interval_s": 1}


def _delivered_in_short_scenario(
    min_readings: int, timeout_s: float, after: float = 0.0, name: str = "readings_published"
) -> Any:
    """A scenario of a few seconds (an update refused): its steps are done when the board has
    published its first reading in it; every reading it publishes is delivered at once."""
    ts = [SINCE + n for n in range(8)]
    stack = _Stack(ts, set())
    stack.probe = _Publishing(ts)
    stack.kafka = _Kafka(ts)  # type: ignore[attr-defined]
    found, _scenario, _kafka = delivered(
        cast(RigStack, stack), cast(RigBoard, _PublishingBoard()), SINCE, timeout_s, min_readings, after
    )
    return next(m for m in found if m.name == name)


def test_expect_waits_until_the_scenario_has_the_readings_it_asks_for() -> None:
    # Before `readings`, expect stopped at the first look with everything delivered: a scenario
    # counted what its seconds happened to hold (4 in a CI run whose test asked for 5).
    published = _delivered_in_short_scenario(min_readings=5, timeout_s=30)
    assert (published.value, published.low, published.outcome) == (5, 5, PASSED)


def test_a_scenario_short_of_its_readings_at_the_deadline_fails_its_expect() -> None:
    published = _delivered_in_short_scenario(min_readings=5, timeout_s=0)
    assert (published.value, published.outcome) == (1, FAILED)


def test_expect_waits_until_the_board_is_back_with_a_reading_measured_after_the_fault() -> None:
    # Until then what it kept during the fault is not in the probe's view: no gap would show it.
    fault_end = SINCE + 4.5
    back = _delivered_in_short_scenario(1, 30, after=fault_end, name="back_after_fault")
    published = _delivered_in_short_scenario(1, 30, after=fault_end)
    assert (back.value, back.outcome, published.value) == (1, PASSED, 6)  # ts SINCE+5 is the 6th
    not_back = _delivered_in_short_scenario(1, 0, after=fault_end, name="back_after_fault")
    assert (not_back.value, not_back.outcome) == (0, FAILED)


def test_a_reading_the_cut_caught_on_its_way_is_not_a_latency_sample() -> None:
    # The garage board's outage_60s in a CI run at load 11 (latency_p95_s=11.584, limit 5): seq 12,
    # measured 1.03 s before the 10 s cut, reached Kafka after it with the outbox; the readings of
    # the last 5 s, clear of the cut and of the 10 s after it, took 1.1 s.
    cut = (SINCE + 0.001, SINCE + 10.0)
    measured = {12: SINCE - 1.03, 34: SINCE + 21.0, 35: SINCE + 22.0, 36: SINCE + 23.0, 37: SINCE + 24.0}
    in_kafka = {12: SINCE + 10.55, 34: SINCE + 22.1, 35: SINCE + 23.1, 36: SINCE + 24.1, 37: SINCE + 25.1}
    published = {(DEVICE, 1, n): {"ts": int(t * 1000), "time_valid": True} for n, t in measured.items()}
    kafka = {(DEVICE, 1, n): [int(t * 1000)] for n, t in in_kafka.items()}
    out = {m.name: m for m in latency(published, kafka, [cut], 5)}
    assert out["latency_samples"].value == 4
    assert (out["latency_p95_s"].value, out["latency_p95_s"].outcome) == (1.1, PASSED)


# A flash_and_verify on a loaded host (a CI run failed latency_p95_s=6.807, limit 5): the step began at
# SINCE, the rig stopped the firmware 2.5 s later (keys, .mpy build, mpremote) and the board's birth
# message came at SINCE + 9.0. Two readings measured before the stop were still on the board when it
# came (the step began at SINCE, so one of them was measured in the step) and one was measured while
# the new firmware booted: all three reached Kafka with the outbox after the birth. Every other
# reading took 0.3 s.
FLASH = (SINCE + 2.5, SINCE + 9.0)
ON_TIME = [SINCE - 0.5, SINCE + 0.5] + [SINCE + 9.5 + n for n in range(11)]
HELD = {SINCE + 1.0: SINCE + 9.8, SINCE + 2.0: SINCE + 9.8, SINCE + 8.5: SINCE + 9.8}


def _timeline(late: dict[float, float]) -> tuple[dict[Any, dict[str, Any]], dict[Any, list[int]]]:
    """Readings measured at each key and first in Kafka at its value (0.3 s later for ON_TIME)."""
    arrivals = {**{t: t + 0.3 for t in ON_TIME}, **late}
    measured = sorted(arrivals)
    published = {(DEVICE, 1, n): {"ts": int(t * 1000), "time_valid": True} for n, t in enumerate(measured)}
    kafka = {(DEVICE, 1, n): [int(arrivals[t] * 1000)] for n, t in enumerate(measured)}
    return published, kafka


def test_readings_a_flash_held_on_the_board_are_left_out_of_latency_and_counted() -> None:
    published, kafka = _timeline(HELD)
    # Without the flash's span (what the flash step recorded before): the held readings are samples.
    unaware = {m.name: m for m in latency(published, kafka, [], 5)}
    assert (unaware["latency_p95_s"].value, unaware["latency_p95_s"].outcome) == (8.8, FAILED)
    out = {m.name: m for m in latency(published, kafka, [], 5, flashes=[FLASH])}
    assert (out["latency_p95_s"].value, out["latency_p95_s"].outcome) == (0.3, PASSED)
    assert out["latency_samples"].value == len(ON_TIME)
    assert (out["latency_excluded_flash"].value, out["latency_excluded_fault"].value) == (3, 0)


def test_a_late_reading_outside_what_a_flash_held_still_fails_the_latency_limit() -> None:
    # Measured after the birth (the board was back) and 6.5 s to Kafka: late, flash or no flash.
    published, kafka = _timeline({**HELD, SINCE + 12.2: SINCE + 18.7})
    out = {m.name: m for m in latency(published, kafka, [], 5, flashes=[FLASH])}
    assert (out["latency_p95_s"].value, out["latency_p95_s"].outcome) == (6.5, FAILED)
    assert (out["latency_samples"].value, out["latency_excluded_flash"].value) == (len(ON_TIME) + 1, 3)
    # Measured 7.5 s before the stop and still not in Kafka when it came: already late, it counts.
    published, kafka = _timeline({**HELD, SINCE - 5.0: SINCE + 9.8})
    out = {m.name: m for m in latency(published, kafka, [], 5, flashes=[FLASH])}
    assert (out["latency_p95_s"].value, out["latency_p95_s"].outcome) == (14.8, FAILED)
    assert out["latency_excluded_flash"].value == 3


def test_readings_left_out_for_a_fault_are_counted_apart_from_a_flash() -> None:
    published, kafka = _timeline(HELD)
    cut = (SINCE + 15.0, SINCE + 16.0)  # the readings of 14.5 .. 19.5 are in it or in the 10 s after
    out = {m.name: m for m in latency(published, kafka, [cut], 5, flashes=[FLASH])}
    assert (out["latency_excluded_flash"].value, out["latency_excluded_fault"].value) == (3, 6)
    assert out["latency_samples"].value == len(ON_TIME) - 6

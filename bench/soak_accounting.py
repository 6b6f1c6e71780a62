"""The accounting of bench/soak.py: every reading the boards published and every final window,
checked against what MongoDB stored and what Kafka held."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from soak_hostile import HOSTILE_BOOT, HOSTILE_DEVICE, HOSTILE_PLACE

from iot import contract, readings_store
from iot.harness.oracle import WindowSpec, differences, slot_ms, summary, windows_of_slots

SAMPLES = 20  # examples kept of each kind of defect
FAULT_BEFORE_MS, FAULT_AFTER_MS = 2_000, 10_000  # a reading this close to a fault is "in" it


def window_specs(args: Any) -> tuple[WindowSpec, ...]:
    return (("tumbling", args.tumbling, args.tumbling), ("hopping", args.hopping, args.hop_step))


def _ms(value: Any) -> int:
    return int(value)  # DatetimeMS (pymongo datetime_conversion) or int


def percentiles(values: Iterable[int | float]) -> dict[str, float | None]:
    data = sorted(values)
    if not data:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return float(data[min(len(data) - 1, math.ceil(q * len(data)) - 1)])

    return {"n": len(data), "p50": at(0.50), "p99": at(0.99), "max": float(data[-1])}


def in_fault(ts_ms: int, faults: Sequence[tuple[int, int]]) -> bool:
    return any(a - FAULT_BEFORE_MS <= ts_ms <= b + FAULT_AFTER_MS for a, b in faults)


def _expected(rows: Sequence[tuple[Any, ...]], place: bool) -> dict[str, Any]:
    """The window over these stored readings (rows: ts, seq, the metrics, device)."""
    out: dict[str, Any] = {"count": len(rows)}
    for i, name in enumerate(contract.METRICS):
        out[name] = summary([r[2 + i] for r in rows if r[2 + i] is not None], exact=False)
    if place:
        out["devices"] = sorted({r[6] for r in rows})
    return out


def account(
    db: Any,
    finals: list[dict[str, Any]],
    watch: Any,
    faults: list[Any],
    args: Any,
    hostile_valid: Sequence[int] | None = None,
) -> dict[str, Any]:
    fault_ms = [(int(f.killed_at * 1000), int(f.back_at * 1000)) for f in faults]
    boards: dict[str, dict[str, Any]] = {}
    fleet_lat: dict[str, list[int]] = {
        "board_ack": [],
        "board_send_lag": [],
        "board_send_lag_outside_faults": [],
        "fleet_loop_lag": [],
    }
    for final in finals:
        boards.update(final["boards"])
        fleet_lat["board_ack"] += final["ack_latency_ms"]
        fleet_lat["board_send_lag"] += final["send_lag_ms"]
        fleet_lat["board_send_lag_outside_faults"] += [
            lag
            for ts, lag in zip(final["send_ts"], final["send_lag_ms"], strict=True)
            if not in_fault(ts, fault_ms)
        ]
        fleet_lat["fleet_loop_lag"] += final["loop_lag_ms"]
    published = sum(b["next_seq"] for b in boards.values())

    # --- readings ---------------------------------------------------------------------------------
    # Every copy a document holds (iot/readings_store.py): a reading held twice is counted twice.
    stored: dict[str, bytearray] = {}
    by_device: dict[str, list[tuple[Any, ...]]] = {}
    by_place: dict[str, list[tuple[Any, ...]]] = {}
    phantom, docs = [], 0
    hostile_seen: dict[tuple[str, int, int], int] = {}
    for doc in readings_store.every_copy(readings_store.collection(db)):
        docs += 1
        device, seq, boot = doc["device"], doc["seq"], doc["boot"]
        if doc["place"] == HOSTILE_PLACE:
            # The hostile board's valid readings: accounted apart, below.
            key = (device, boot, seq)
            hostile_seen[key] = hostile_seen.get(key, 0) + 1
            continue
        board = boards.get(device)
        if board is None or boot != board["boot"] or seq >= board["next_seq"]:
            phantom.append(doc["_id"])
            continue
        seen = stored.setdefault(device, bytearray(board["next_seq"]))
        seen[seq] += 1
        row = (_ms(doc["ts"]), seq, *(doc.get(m) for m in contract.METRICS), device)
        by_device.setdefault(device, []).append(row)
        by_place.setdefault(doc["place"], []).append(row)
    missing: list[tuple[str, int]] = []
    for device, board in boards.items():
        seen = stored.get(device, bytearray(board["next_seq"]))
        for seq in range(board["next_seq"]):
            if not seen[seq]:
                missing.append((device, seq))
    for rows in (*by_device.values(), *by_place.values()):
        rows.sort(key=lambda r: r[0])
    dropped = sum(len(b["dropped"]) for b in boards.values())
    unacked = sum(len(b["unacked"]) for b in boards.values())

    # --- windows ----------------------------------------------------------------------------------
    windows: dict[str, Any] = {}
    latency_final: list[int] = []
    latency_final_outside: list[int] = []
    end_to_final: list[int] = []  # the pipeline's part: window end -> final document
    specs = window_specs(args)
    slot = slot_ms(specs)
    for coll, key_field, index, is_place in (
        (contract.COLL_SENSOR_WINDOWS, "device", by_device, False),
        (contract.COLL_PLACE_WINDOWS, "place", by_place, True),
    ):
        checked, not_final, bad, examples = 0, 0, 0, []
        present: set[tuple[str, str, int, int]] = set()
        for doc in db[coll].find({}, batch_size=5_000):
            if doc[key_field] in (HOSTILE_DEVICE, HOSTILE_PLACE):
                continue  # the hostile board's windows hold only its own readings, not the fleet's
            present.add((doc[key_field], doc["kind"], doc["size_s"], _ms(doc["start"])))
            if not doc.get("final"):
                not_final += 1
                continue
            rows = index.get(doc[key_field], [])
            start, end = _ms(doc["start"]), _ms(doc["end"])
            part = rows[bisect_left(rows, (start,)) : bisect_left(rows, (end,))]
            diffs = differences(doc, _expected(part, is_place))
            checked += 1
            if diffs:
                bad += 1
                if len(examples) < SAMPLES:
                    examples.append({"_id": doc["_id"], "revision": doc.get("revision"), "diffs": diffs[:4]})
            if not is_place and doc["kind"] == "tumbling":
                updated = _ms(doc["updated_at"])
                if doc.get("revision", 0) == 0 and not any(in_fault(r[0], fault_ms) for r in part):
                    end_to_final.append(updated - end)
                for row in part:
                    latency_final.append(updated - row[0])
                    if not in_fault(row[0], fault_ms):
                        latency_final_outside.append(updated - row[0])
        # Every window some stored reading falls in must exist.
        slots = {key: {row[0] // slot for row in rows} for key, rows in index.items()}
        absent = sorted(windows_of_slots(slots, slot, specs) - present)
        windows[coll] = {
            "final_checked": checked,
            "final_differing": bad,
            "not_final": not_final,
            "absent": len(absent),
            "absent_examples": [list(a) for a in absent[:SAMPLES]],
            "examples": examples,
        }

    # --- Kafka, latency ---------------------------------------------------------------------------
    kafka_lat = list(watch.latency) if watch else []
    kafka_ts = list(watch.ts) if watch else []
    to_gateway = list(watch.to_gateway) if watch else []
    outside = [i for i, ts in enumerate(kafka_ts) if not in_fault(ts, fault_ms)]
    missing_in_fault = sum(
        1 for device, seq in missing if in_fault(_seq_ts(by_device.get(device, []), seq), fault_ms)
    )
    per_second = sorted((watch.per_second if watch else {}).items())
    hostile: dict[str, Any] | None = None
    if hostile_valid is not None:
        want = {(HOSTILE_DEVICE, HOSTILE_BOOT, seq) for seq in hostile_valid}
        hostile = {
            "valid_published": len(want),
            "stored_once": sum(1 for k in want if hostile_seen.get(k) == 1),
            "missing": sorted(k[2] for k in want if k not in hostile_seen),
            "doubled": sorted(k[2] for k in want if hostile_seen.get(k, 0) > 1),
            # Stored although not one of its valid readings: a poison reading got through.
            "unexpected": sorted(f"{k[0]!r}:{k[1]}:{k[2]}" for k in hostile_seen if k not in want)[:SAMPLES],
            "dlq_records_total": watch.dlq if watch else 0,
        }
    return {
        "hostile": hostile,
        "published": published,
        "stored_docs": docs,
        "stored_once": sum(1 for seen in stored.values() for n in seen if n == 1),
        "stored_twice": sum(1 for seen in stored.values() for n in seen if n > 1),
        "missing": len(missing),
        "missing_near_faults": missing_in_fault,
        "missing_examples": missing[:SAMPLES],
        "phantom": len(phantom),
        "phantom_examples": phantom[:SAMPLES],
        "board_dropped": dropped,
        "board_unacked_at_end": unacked,
        "boards_unacked_examples": [
            {
                "device": d,
                **{k: b.get(k) for k in ("ready", "linked", "inflight", "queued")},
                "unacked": len(b["unacked"]),
                "first": b["unacked"][:3],
            }
            for d, b in boards.items()
            if b["unacked"]
        ][:SAMPLES],
        "kafka": {
            "records": watch.records if watch else 0,
            "distinct": watch.distinct() if watch else 0,
            "duplicates": watch.duplicates if watch else 0,
            "dlq": watch.dlq if watch else 0,
            "per_second": per_second,
        },
        "windows": windows,
        "latency_ms": {
            "ts_to_kafka": percentiles(kafka_lat),
            "ts_to_kafka_outside_faults": percentiles(kafka_lat[i] for i in outside),
            # The two halves of ts -> Kafka, split at the gateway's received_at.
            "ts_to_gateway_outside_faults": percentiles(to_gateway[i] for i in outside),
            "gateway_to_kafka_outside_faults": percentiles(kafka_lat[i] - to_gateway[i] for i in outside),
            "ts_to_final_window": percentiles(latency_final),
            "ts_to_final_window_outside_faults": percentiles(latency_final_outside),
            # ts -> final includes the wait for the window's end; this is what the pipeline adds to it
            # (grace + idle close + backend lag), per tumbling window with no reading near a fault.
            "window_end_to_final_outside_faults": percentiles(end_to_final),
            **{name: percentiles(values) for name, values in fleet_lat.items()},
        },
        "latency_timeline": latency_timeline(kafka_ts, kafka_lat, to_gateway),
        "faults": [f.summary() for f in faults],
    }


def latency_timeline(
    ts: Sequence[int], total: Sequence[int], to_gateway: Sequence[int], bucket_s: int = 10
) -> list[dict[str, Any]]:
    """p50/p99 of ts -> Kafka and of its board -> gateway half per `bucket_s` of event time: where in
    the run the tail is."""
    buckets: dict[int, list[int]] = {}
    for i, t in enumerate(ts):
        buckets.setdefault(t // (bucket_s * 1000), []).append(i)
    out = []
    for b, idx in sorted(buckets.items()):
        tot = percentiles(total[i] for i in idx)
        gw = percentiles(to_gateway[i] for i in idx)
        out.append(
            {"t": b * bucket_s, "n": len(idx), "p50": tot["p50"], "p99": tot["p99"], "gw_p99": gw["p99"]}
        )
    return out


def _seq_ts(rows: list[tuple[Any, ...]], seq: int) -> int:
    # A missing reading has no stored ts: estimate it from its stored neighbours of the same board.
    best = None
    for row in rows:
        if best is None or abs(row[1] - seq) < abs(best[1] - seq):
            best = row
    return 0 if best is None else int(best[0])

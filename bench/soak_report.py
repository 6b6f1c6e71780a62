"""Accounting and report of bench/soak.py: every reading and every final window, checked against what
the boards published and what MongoDB stored."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from iot import contract

METRICS = contract.METRICS
SAMPLES = 20  # examples kept of each kind of defect
FAULT_BEFORE_MS, FAULT_AFTER_MS = 2_000, 10_000  # a reading this close to a fault is "in" it


def _ms(value: Any) -> int:
    return int(value)  # DatetimeMS (pymongo datetime_conversion) or int


def percentiles(values: Iterable[int | float]) -> dict[str, float | None]:
    data = sorted(values)
    if not data:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return float(data[min(len(data) - 1, math.ceil(q * len(data)) - 1)])

    return {"n": len(data), "p50": at(0.50), "p99": at(0.99), "max": float(data[-1])}


def _in_fault(ts_ms: int, faults: Sequence[tuple[int, int]]) -> bool:
    return any(a - FAULT_BEFORE_MS <= ts_ms <= b + FAULT_AFTER_MS for a, b in faults)


def _expected(rows: Sequence[tuple[Any, ...]], place: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"count": len(rows)}
    for i, name in enumerate(METRICS):
        values = [r[2 + i] for r in rows if r[2 + i] is not None]
        out[name] = {
            "count": len(values),
            "mean": math.fsum(values) / len(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        }
    if place:
        out["devices"] = sorted({r[6] for r in rows})
    return out


def _differs(doc: dict[str, Any], exp: dict[str, Any]) -> list[str]:
    diffs = []
    if doc.get("count") != exp["count"]:
        diffs.append(f"count {doc.get('count')} != {exp['count']}")
    for name in METRICS:
        got, want = doc.get(name) or {}, exp[name]
        for part in ("count", "min", "max"):
            if got.get(part) != want[part]:
                diffs.append(f"{name}.{part} {got.get(part)} != {want[part]}")
        g, w = got.get("mean"), want["mean"]
        if (g is None) != (w is None) or (g is not None and not math.isclose(g, w, rel_tol=1e-12)):
            diffs.append(f"{name}.mean {g} != {w}")
    if "devices" in exp and sorted(doc.get("devices") or []) != exp["devices"]:
        diffs.append(f"devices {len(doc.get('devices') or [])} != {len(exp['devices'])}")
    return diffs


def _window_starts(ts: int, size_ms: int, step_ms: int) -> list[int]:
    last = ts - ts % step_ms
    return list(range(last, ts - size_ms, -step_ms))


def account(
    db: Any, finals: list[dict[str, Any]], watch: Any, faults: list[Any], args: Any
) -> dict[str, Any]:
    fault_ms = [(int(f.killed_at * 1000), int(f.back_at * 1000)) for f in faults]
    boards: dict[str, dict[str, Any]] = {}
    latency_ack: list[int] = []
    for final in finals:
        boards.update(final["boards"])
        latency_ack += final["ack_latency_ms"]
    published = sum(b["next_seq"] for b in boards.values())

    # --- readings ---------------------------------------------------------------------------------
    projection = {
        "_id": 1,
        "device": 1,
        "place": 1,
        "boot": 1,
        "seq": 1,
        "ts": 1,
        **dict.fromkeys(METRICS, 1),
    }
    stored: dict[str, bytearray] = {}
    by_device: dict[str, list[tuple[Any, ...]]] = {}
    by_place: dict[str, list[tuple[Any, ...]]] = {}
    phantom, id_mismatch, docs = [], 0, 0
    for doc in db[contract.COLL_READINGS].find({}, projection, batch_size=10_000):
        docs += 1
        device, seq, boot = doc["device"], doc["seq"], doc["boot"]
        if doc["_id"] != contract.reading_id(device, boot, seq):
            id_mismatch += 1
        board = boards.get(device)
        if board is None or boot != board["boot"] or seq >= board["next_seq"]:
            phantom.append(doc["_id"])
            continue
        seen = stored.setdefault(device, bytearray(board["next_seq"]))
        seen[seq] += 1
        row = (_ms(doc["ts"]), seq, *(doc.get(m) for m in METRICS), device)
        by_device.setdefault(device, []).append(row)
        by_place.setdefault(doc["place"], []).append(row)
    missing: list[tuple[str, int]] = []
    missing_in_fault = 0
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
    for coll, key_field, index, is_place in (
        (contract.COLL_SENSOR_WINDOWS, "device", by_device, False),
        (contract.COLL_PLACE_WINDOWS, "place", by_place, True),
    ):
        checked, not_final, bad, examples = 0, 0, 0, []
        present: set[tuple[str, str, int, int]] = set()
        for doc in db[coll].find({}, batch_size=5_000):
            present.add((doc[key_field], doc["kind"], doc["size_s"], _ms(doc["start"])))
            if not doc.get("final"):
                not_final += 1
                continue
            rows = index.get(doc[key_field], [])
            start, end = _ms(doc["start"]), _ms(doc["end"])
            lo = bisect_left(rows, (start,))
            hi = bisect_left(rows, (end,))
            part = rows[lo:hi]
            diffs = _differs(doc, _expected(part, is_place))
            checked += 1
            if diffs:
                bad += 1
                if len(examples) < SAMPLES:
                    examples.append({"_id": doc["_id"], "revision": doc.get("revision"), "diffs": diffs[:4]})
            if not is_place and doc["kind"] == "tumbling":
                updated = _ms(doc["updated_at"])
                for row in part:
                    latency_final.append(updated - row[0])
                    if not _in_fault(row[0], fault_ms):
                        latency_final_outside.append(updated - row[0])
        # Every window some stored reading falls in must exist.
        absent = 0
        specs = (("tumbling", args.tumbling, args.tumbling), ("hopping", args.hopping, args.hop_step))
        for key, rows in index.items():
            for kind, size_s, step_s in specs:
                starts = {s for row in rows for s in _window_starts(row[0], size_s * 1000, step_s * 1000)}
                absent += sum(1 for s in starts if (key, kind, size_s, s) not in present)
        windows[coll] = {
            "final_checked": checked,
            "final_differing": bad,
            "not_final": not_final,
            "absent": absent,
            "examples": examples,
        }

    # --- Kafka, latency ---------------------------------------------------------------------------
    kafka_lat = list(watch.latency) if watch else []
    kafka_ts = list(watch.ts) if watch else []
    outside = [lat for lat, ts in zip(kafka_lat, kafka_ts, strict=True) if not _in_fault(ts, fault_ms)]
    missing_in_fault = sum(
        1 for device, seq in missing if _in_fault(_seq_ts(by_device.get(device, []), seq), fault_ms)
    )
    per_second = sorted((watch.per_second if watch else {}).items())
    return {
        "published": published,
        "stored_docs": docs,
        "stored_once": sum(1 for seen in stored.values() for n in seen if n == 1),
        "stored_twice": sum(1 for seen in stored.values() for n in seen if n > 1) + id_mismatch,
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
            "ts_to_kafka_outside_faults": percentiles(outside),
            "ts_to_final_window": percentiles(latency_final),
            "ts_to_final_window_outside_faults": percentiles(latency_final_outside),
            "board_ack": percentiles(latency_ack),
        },
        "faults": [
            {
                "fault": f.name,
                "target": f.target,
                "killed_at": round(f.killed_at, 3),
                "back_at": round(f.back_at, 3),
                "down_s": round(f.back_at - f.killed_at, 1),
                "ok": f.ok,
            }
            for f in faults
        ],
    }


def _seq_ts(rows: list[tuple[Any, ...]], seq: int) -> int:
    # A missing reading has no stored ts: estimate it from its stored neighbours of the same board.
    best = None
    for row in rows:
        if best is None or abs(row[1] - seq) < abs(best[1] - seq):
            best = row
    return 0 if best is None else int(best[0])


def finish(result: dict[str, Any]) -> None:
    """Derived figures and the verdict."""
    load_s = max(result["load_s"], 1e-9)
    lags = [s["lag"] for s in result["samples"] if s.get("lag") is not None]
    result["lag"] = {
        "max": max(lags) if lags else None,
        "end": lags[-1] if lags else None,
        "samples": len(lags),
    }
    rates = [n for _t, n in result["kafka"]["per_second"]]
    result["throughput"] = {
        "published_per_s": round(result["published"] / load_s, 1),
        "kafka_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
        "kafka_per_s_peak": max(rates) if rates else None,
    }
    w = result["windows"]
    failures = []
    for key in ("missing", "phantom", "stored_twice", "board_dropped", "board_unacked_at_end"):
        if result[key]:
            failures.append(f"{key}={result[key]}")
    for coll, stats in w.items():
        for key in ("final_differing", "not_final", "absent"):
            if stats[key]:
                failures.append(f"{coll}.{key}={stats[key]}")
    if not all(f["ok"] for f in result["faults"]):
        failures.append("a component did not come back")
    for key, ok in result["drain"].items():
        if ok is False:
            failures.append(f"drain {key} timed out")
    result["failures"] = failures
    result["ok"] = not failures


def _fmt(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "-"
    return (
        f"p50 {p['p50'] / 1000:.2f} s  p99 {p['p99'] / 1000:.2f} s  max {p['max'] / 1000:.1f} s  (n={p['n']})"
    )


def table(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [
        "",
        f"SOAK  {c['devices']} boards x {c['rate']} Hz over {c['places']} places, {c['gateways']} gateways, "
        f"load {r['load_s']:.0f} s (wall {r['wall_s']:.0f} s), ack timeout {c['ack_timeout']} s, "
        f"{r['machine']['cpus']} CPUs (load avg at end {r['machine']['loadavg_end'][0]:.1f})",
        "",
        f"  published                 {r['published']:>10,}",
        f"  stored in readings once   {r['stored_once']:>10,}",
        f"  missing                   {r['missing']:>10,}   (near a fault: {r['missing_near_faults']})",
        f"  stored twice / phantom    {r['stored_twice']:>10,} / {r['phantom']:,}",
        f"  dropped / unacked boards  {r['board_dropped']:>10,} / {r['board_unacked_at_end']:,}",
        f"  Kafka records / distinct  {r['kafka']['records']:>10,} / {r['kafka']['distinct']:,}  "
        f"(duplicates {r['kafka']['duplicates']:,}, de-duplicated downstream; DLQ {r['kafka']['dlq']})",
    ]
    b = r["boards"]
    lines.append(
        f"  boards                    sent {b['sent']:,}, re-sent {b['resent']:,}, "
        f"ack messages {b['acks']:,}, "
        f"connects {b['connects']:,}, PUBACK timeouts {b.get('puback_timeouts', 0)}, "
        f"keepalive timeouts {b.get('keepalive_timeouts', 0)}"
    )
    for coll, w in r["windows"].items():
        lines.append(
            f"  {coll:<25} {w['final_checked'] - w['final_differing']:>10,} of {w['final_checked']:,} final "
            f"windows exact; not final {w['not_final']}, absent {w['absent']}"
        )
    t = r["throughput"]
    lines += [
        f"  throughput                published {t['published_per_s']:,.0f}/s; reached Kafka median "
        f"{t['kafka_per_s_median']}/s, peak {t['kafka_per_s_peak']}/s",
    ]
    lat = r["latency_ms"]
    lines += [
        f"  ts -> Kafka               {_fmt(lat['ts_to_kafka'])}",
        f"    outside faults          {_fmt(lat['ts_to_kafka_outside_faults'])}",
        f"  ts -> final window        {_fmt(lat['ts_to_final_window'])}",
        f"    outside faults          {_fmt(lat['ts_to_final_window_outside_faults'])}",
        f"  board ack (ts -> release) {_fmt(lat['board_ack'])}",
        f"  consumer lag (backend)    max {r['lag']['max']}, at end {r['lag']['end']} "
        f"({r['lag']['samples']} samples)",
        "",
        "  faults:",
    ]
    t0 = r["samples"][0]["t"] if r["samples"] else 0
    for f in r["faults"]:
        lines.append(
            f"    {f['fault']:<10} {f['target']:<10} at +{f['killed_at'] - t0:6.1f} s, "
            f"back after {f['down_s']:5.1f} s"
            f"{'' if f['ok'] else '  DID NOT COME BACK'}"
        )
    if r["unplanned_exits"]:
        lines.append(f"  unplanned exits: {r['unplanned_exits']}")
    lines += ["", "  RSS (MB)        start      end"]
    for name, m in r["rss"].items():
        start = "-" if m["start_kb"] is None else f"{m['start_kb'] / 1024:8.1f}"
        end = "-" if m["end_kb"] is None else f"{m['end_kb'] / 1024:8.1f}"
        lines.append(f"    {name:<12} {start:>8} {end:>8}{'  (restarted)' if m['restarted'] else ''}")
    lines += [
        "",
        f"  drain: {r['drain']}",
        "",
        "RESULT: " + ("OK" if r["ok"] else "FAIL " + "; ".join(r["failures"])),
    ]
    return "\n".join(lines)

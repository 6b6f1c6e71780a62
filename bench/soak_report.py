"""The verdict and the terminal table of bench/soak.py, and the figures derived from its samples:
throughput, lag, CPU use and pressure, memory over time per service."""

from __future__ import annotations

from typing import Any

from soak_accounting import percentiles

QUIET_AFTER_FAULT_S = 10.0  # samples this long after a fault came back count as "steady"


def _slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return round(sum((t - mt) * (v - mv) for t, v in points) / var * 60 / 1024, 2)


def memory(result: dict[str, Any], warm_at: float, load_end: float) -> dict[str, Any]:
    """RSS per service from the samples. For the instance running at the end (a killed service's
    second life): its first sample, its RSS `warm_s` after it started (the honest start: caches and
    per-key state exist by then), its peak, its last value, and the growth rate after the last fault
    (MB/min: about 0 is a plateau, a steady rise with no load change a leak)."""
    samples = result["samples"]
    faults_end = max((f["back_at"] for f in result["faults"]), default=warm_at) + QUIET_AFTER_FAULT_S
    out: dict[str, Any] = {}
    names = {n for s in samples for n in s.get("rss_kb", {})}
    for name in sorted(names):
        points = [(s["t"], s["rss_kb"].get(name), s.get("pid", {}).get(name)) for s in samples]
        points = [(t, v, p) for t, v, p in points if v is not None]
        if not points:
            continue
        last_pid = points[-1][2]
        life = [(t, v) for t, v, p in points if p == last_pid]
        born = life[0][0]
        start_t = max(warm_at, born + (warm_at - result["load_started"]))
        start = next((v for t, v in life if t >= start_t), life[-1][1])
        steady = [(t, v) for t, v in life if faults_end <= t <= load_end]
        out[name] = {
            "restarted": any(p != last_pid for _t, _v, p in points),
            "first_kb": life[0][1],
            "start_kb": start,
            "start_at_s": round(start_t - result["load_started"], 1),
            "peak_kb": max(v for _t, v in life),
            "end_kb": life[-1][1],
            "end_vs_start": round(life[-1][1] / start, 3) if start else None,
            "steady_growth_mb_per_min": _slope_mb_per_min(steady),
            "steady_samples": len(steady),
            "over_time_mb": [[round(t - result["load_started"]), round(v / 1024, 1)] for t, v in life][::5],
        }
    return out


def cpu(result: dict[str, Any]) -> dict[str, Any]:
    """CPU share per service (1.0 = one core) and CPU pressure over the load: the fraction of time
    some runnable task waited for a CPU (Linux PSI "some")."""
    samples = [s for s in result["samples"] if result["load_started"] <= s["t"] <= result["load_ended"]]
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]
    span = last["t"] - first["t"]
    share: dict[str, float | None] = {}
    for name in last.get("cpu_s", {}):
        total, prev = 0.0, None
        for s in samples:  # summed over instances: a restart starts its counter at 0
            value, pid = s["cpu_s"].get(name), s["pid"].get(name)
            if value is None:
                continue
            if prev is not None and prev[1] == pid:
                total += value - prev[0]
            prev = (value, pid)
        share[name] = round(total / span, 2)
    p0, p1 = first.get("cpu_pressure_us"), last.get("cpu_pressure_us")
    pressure = round((p1 - p0) / 1e6 / span, 3) if p0 is not None and p1 is not None else None
    return {"share_of_a_core": share, "pressure_some": pressure}


def finish(result: dict[str, Any]) -> None:
    """Derived figures and the verdict."""
    load_s = max(result["load_s"], 1e-9)
    lags = [(s["t"], s["lag"]) for s in result["samples"] if s.get("lag") is not None]
    t0 = result["load_started"]
    result["lag"] = {
        "max": max(v for _t, v in lags) if lags else None,
        "end": lags[-1][1] if lags else None,
        "samples": len(lags),
        "over_time": [[round(t - t0), v] for t, v in lags][::15],
    }
    rates = [n for _t, n in result["kafka"]["per_second"]]
    result["throughput"] = {
        "published_per_s": round(result["published"] / load_s, 1),
        "kafka_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
        "kafka_per_s_peak": max(rates) if rates else None,
    }
    result["memory"] = memory(result, result["warm_at"], result["load_ended"])
    result["cpu"] = cpu(result)
    failures = []
    for key in ("missing", "phantom", "stored_twice", "board_dropped", "board_unacked_at_end"):
        if result[key]:
            failures.append(f"{key}={result[key]}")
    hostile = result.get("hostile")
    if hostile:
        for key in ("missing", "doubled", "unexpected"):
            if hostile[key]:
                failures.append(f"hostile.{key}={hostile[key]}")
    for coll, stats in result["windows"].items():
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


def _hostile_lines(h: dict[str, Any] | None) -> list[str]:
    if not h:
        return []
    return [
        f"  hostile board: valid {h['valid_published']}, stored once {h['stored_once']}, missing "
        f"{len(h['missing'])}, doubled {len(h['doubled'])}, poison stored {len(h['unexpected'])}; "
        f"DLQ records in the run {h['dlq_records_total']:,}",
    ]


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
        *_hostile_lines(r.get("hostile")),
        f"  Kafka records / distinct  {r['kafka']['records']:>10,} / {r['kafka']['distinct']:,}  "
        f"(duplicates {r['kafka']['duplicates']:,}, de-duplicated downstream; DLQ {r['kafka']['dlq']})",
    ]
    b = r["boards"]
    lines.append(
        f"  boards                    sent {b['sent']:,}, re-sent {b['resent']:,}, "
        f"ack messages {b['acks']:,}, "
        f"connects {b['connects']:,}, PUBACK timeouts {b.get('puback_timeouts', 0)}, "
        f"keepalive timeouts {b.get('keepalive_timeouts', 0)}, ack timeouts {b.get('ack_timeouts', 0)}"
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
        f"      ts -> gateway         {_fmt(lat['ts_to_gateway_outside_faults'])}",
        f"      gateway -> Kafka      {_fmt(lat['gateway_to_kafka_outside_faults'])}",
        f"  ts -> final window        {_fmt(lat['ts_to_final_window'])}",
        f"    outside faults          {_fmt(lat['ts_to_final_window_outside_faults'])}",
        f"      window end -> final   {_fmt(lat['window_end_to_final_outside_faults'])}",
        f"  board ack (ts -> release) {_fmt(lat['board_ack'])}",
        f"  generator: ts -> 1st send {_fmt(lat['board_send_lag'])}",
        f"    outside faults          {_fmt(lat['board_send_lag_outside_faults'])}",
        f"  generator: loop lateness  {_fmt(lat['fleet_loop_lag'])}",
        f"  consumer lag (backend)    max {r['lag']['max']}, at end {r['lag']['end']} "
        f"({r['lag']['samples']} samples)",
    ]
    lines.append(
        "  lag over time (s: lag)    " + ", ".join(f"{t}: {v}" for t, v in r["lag"]["over_time"][:20])
    )
    if r.get("cpu"):
        share = ", ".join(f"{k} {v}" for k, v in r["cpu"]["share_of_a_core"].items() if v is not None)
        lines.append(f"  CPU (cores)               {share}; CPU pressure {r['cpu']['pressure_some']}")
    lines += ["", "  faults:"]
    t0 = r["load_started"]
    for f in r["faults"]:
        lines.append(
            f"    {f['fault']:<10} {f['target']:<10} at +{f['killed_at'] - t0:6.1f} s, "
            f"back after {f['down_s']:5.1f} s"
            f"{'' if f['ok'] else '  DID NOT COME BACK'}"
        )
    if r["unplanned_exits"]:
        lines.append(f"  unplanned exits: {r['unplanned_exits']}")
    lines += ["", "  RSS (MB)       start (at)      peak      end  end/start  growth after faults"]
    for name, m in r["memory"].items():
        growth = m["steady_growth_mb_per_min"]
        lines.append(
            f"    {name:<10} {m['start_kb'] / 1024:7.1f} (+{m['start_at_s']:4.0f}s) "
            f"{m['peak_kb'] / 1024:8.1f} "
            f"{m['end_kb'] / 1024:8.1f}  {m['end_vs_start']:8}  "
            f"{'-' if growth is None else f'{growth:+.2f} MB/min'}{'  (restarted)' if m['restarted'] else ''}"
        )
    lines += [
        "",
        f"  drain: {r['drain']}",
        "",
        "RESULT: " + ("OK" if r["ok"] else "FAIL " + "; ".join(r["failures"])),
    ]
    return "\n".join(lines)


__all__ = ["cpu", "finish", "memory", "percentiles", "table"]

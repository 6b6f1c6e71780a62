"""How many virtual boards this machine runs, and what one costs: memory, CPU, delivery.

Runs a baseline of 1 board, then N boards, each for --seconds, against the real broker, and prints
per-board resident memory, CPU share and readings delivered, with the N-board figures as a ratio to
the 1-board baseline measured in the same run. Short by default (2 x 30 s); stops every board it
started.

    .venv/bin/python bench/boards_capacity.py --count 100 --seconds 30 --interval 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hil import fleet
from hil.probe import Probe, clear_retained
from hil.vboard_process import DEFAULT_HEAP

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def measure(
    count: int, places: int, seconds: float, interval: float, broker: fleet.Broker, root: Path
) -> dict[str, float]:
    prefix = f"bench{os.getpid()}n{count}"
    plans = fleet.plan(count, places, interval, broker.url, prefix=prefix, extra_config=broker.tls_config())
    devices = {p.device for p in plans}
    f = fleet.Fleet(
        root / f"n{count}", plans, DEFAULT_HEAP, tls_ca=broker.ca, provisioning=broker.provisioning()
    )
    f.prepare(fresh=True)
    ca = str(broker.ca) if broker.ca else None
    with Probe(broker.url, ["sensors/+/+/#"], keep=lambda t: t.split("/")[2] in devices, tls_ca=ca) as probe:
        started = time.monotonic()
        f.start()
        launched = time.monotonic() - started
        # Measure steady state: from the first reading of the last board to start, for `seconds`.
        while len({m.topic.split("/")[2] for m in probe.messages("reading")}) < count:
            if time.monotonic() - started > 60:
                break
            time.sleep(0.2)
        all_up = time.monotonic() - started
        pids = [b.pid for b in f.boards if b.pid is not None and b.running]
        cpu0 = sum(_cpu_s(p) for p in pids)
        n0 = probe.count("reading")
        t0 = time.monotonic()
        time.sleep(seconds)  # a measurement window, not a synchronisation
        t1 = time.monotonic()
        cpu1 = sum(_cpu_s(p) for p in pids if Path(f"/proc/{p}").exists())
        n1 = probe.count("reading")
        rss = f.rss_kb()
        health = [m.json() for m in probe.messages("health")]
        f.stop()
    clear_retained(broker.url, [(p.place, p.device) for p in plans], tls_ca=ca)
    f.remove_accounts()
    mem_free = [h["mem_free"] for h in health]
    return {
        "boards": count,
        "running": len(rss),
        "launch_s": launched,
        "all_publishing_s": all_up,
        "rss_mb_per_board": sum(rss) / len(rss) / 1024 if rss else 0.0,
        "rss_mb_total": sum(rss) / 1024,
        "cpu_pct_per_board": (cpu1 - cpu0) / (t1 - t0) * 100 / max(1, len(pids)),
        "cpu_pct_total": (cpu1 - cpu0) / (t1 - t0) * 100,
        "readings_per_s": (n1 - n0) / (t1 - t0),
        "expected_per_s": count / interval,
        "heap_free_min_kb": min(mem_free) / 1024 if mem_free else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--places", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    broker = fleet.Broker.from_env()  # IOT_MQTT_URL and IOT_MQTT_TLS_CA, as `iot boards` reads them
    with tempfile.TemporaryDirectory(prefix="boards-bench-") as tmp:
        base = measure(1, 1, args.seconds, args.interval, broker, Path(tmp))
        many = measure(args.count, args.places, args.seconds, args.interval, broker, Path(tmp))
    print(
        f"virtual boards on {os.cpu_count()} cores, heap {DEFAULT_HEAP}, interval {args.interval}s, "
        f"{args.seconds:.0f}s windows"
    )
    print(f"{'figure':<22}{'1 board':>12}{f'{args.count} boards':>14}{'ratio':>10}")
    for key in (
        "running",
        "rss_mb_per_board",
        "rss_mb_total",
        "cpu_pct_per_board",
        "cpu_pct_total",
        "readings_per_s",
        "expected_per_s",
        "heap_free_min_kb",
        "launch_s",
        "all_publishing_s",
    ):
        a, b = base[key], many[key]
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"{key:<22}{a:>12.2f}{b:>14.2f}{ratio:>10}")
    delivered = many["readings_per_s"] / many["expected_per_s"]
    print(f"delivery at {args.count} boards: {delivered:.1%} of the readings they should send")
    return 0


if __name__ == "__main__":
    sys.exit(main())

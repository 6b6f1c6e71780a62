"""What a reading costs the gateway at a fleet's pace, the figure that matters when the gateway shares
the box with the backend (bench/soak.py).

    .venv/bin/python bench/gateway_cpu.py [--baseline-tree PATH] [--rate 1000] [--seconds 20]
        [--rounds 3] [--devices 2000] [--profile DIR]

Publishers paced at `--rate` readings/s for `--seconds` from `--devices` boards (one end-to-end ack
message per board per flush, as in the soak), and the gateway process's CPU (user + system, all its
threads, from /proc) over that span, divided by the readings. With `--baseline-tree PATH` (another
source tree of this repository, e.g. `git worktree add --detach /tmp/before main`) a second gateway
runs that tree's code beside this one, each on a place of its own with publishers of its own, both at
once in every round, so the ratio current/baseline is taken over the same seconds on this shared box
(runs a minute apart differed by +-15 % on their own). Prometheus is scraped only after the
publishers finished (a scrape renders every board's series: gateway CPU too). The gateways write to
a private Kafka unless `--kafka shared` (bench/gateway_throughput.py's docstring).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
from pathlib import Path

from gateway_load import Gateways, add_gateway_arguments, kafka_for_bench, publish, uid

from iot.kafka import KafkaConnection


def measure_cpu(gws: Gateways, count: int, devices: int, publishers: int, rate: float) -> tuple[float, float]:
    """(CPU µs per reading, achieved rate) of the gateways for `count` readings paced at `rate`/s."""
    base = gws.totals("iot_gateway_produced_total")
    before = gws.cpu_s()
    pub_rate = publish(gws.place, devices, count, publishers, rate)
    gws.wait_produced(base + count)
    used = gws.cpu_s() - before
    return used / count * 1e6, pub_rate


def compare_cpu(args: argparse.Namespace, kafka: KafkaConnection, tmp: Path) -> None:
    """Paced runs of this tree's gateway and, with --baseline-tree, the baseline's beside it."""
    count = int(args.rate * args.seconds)
    variants: dict[str, Gateways] = {
        "current": Gateways(args.gateways, uid("benchc"), kafka, tmp, args.max_in_flight, args.profile)
    }
    if args.baseline_tree is not None:
        variants["baseline"] = Gateways(
            args.gateways, uid("benchb"), kafka, tmp, args.max_in_flight, None, args.baseline_tree.resolve()
        )
    results: dict[str, list[float]] = {name: [] for name in variants}
    ratios: list[float] = []
    try:
        for gws in variants.values():
            gws.start()
        # Unmeasured warm-up: the first readings of 2,000 new boards fill every per-board cache.
        for gws in variants.values():
            measure_cpu(gws, min(count, args.devices * 2), args.devices, args.publishers, args.rate)
        for rnd in range(args.rounds):
            # Every tree's run at the same time, each with its own publishers at the same pace: they
            # share whatever else this box is doing, which moves CPU per reading by +-15 % between
            # runs even a minute apart.
            got: dict[str, tuple[float, float]] = {}
            spies = variants["current"].start_profilers() if rnd == args.rounds - 1 else []

            def run_one(name: str, gws: Gateways, into: dict[str, tuple[float, float]]) -> None:
                into[name] = measure_cpu(gws, count, args.devices, args.publishers, args.rate)

            runs = [threading.Thread(target=run_one, args=(name, gws, got)) for name, gws in variants.items()]
            for run in runs:
                run.start()
            for run in runs:
                run.join()
            variants["current"].stop_profilers(spies)
            load = os.getloadavg()[0]
            for name, (us, pub_rate) in got.items():
                results[name].append(us)
                print(
                    f"round {rnd + 1} {name:8s}: {us:7.1f} µs CPU per reading  ({count} readings at "
                    f"{pub_rate:,.0f}/s from {args.devices} boards, load {load:.1f})",
                    flush=True,
                )
            if "baseline" in got:
                ratios.append(got["current"][0] / got["baseline"][0])
                print(f"round {rnd + 1} ratio current/baseline: {ratios[-1]:.2f}", flush=True)
    finally:
        for gws in variants.values():
            gws.stop()
            gws.discard_sessions()
    variants["current"].print_profiles()
    for name, values in results.items():
        print(f"median {name:8s}: {statistics.median(values):7.1f} µs CPU per reading")
    if ratios:
        print(f"ratio current/baseline (median of rounds): {statistics.median(ratios):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_gateway_arguments(parser)
    parser.add_argument("--rate", type=float, default=1000.0, help="readings/s, all publishers")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs every tree once)")
    parser.add_argument(
        "--baseline-tree", type=Path, default=None, help="another source tree to compare with"
    )
    args = parser.parse_args()
    if args.baseline_tree is not None and not (args.baseline_tree / "gateway").is_dir():
        parser.error("--baseline-tree needs a source tree of this repository (with gateway/)")
    with kafka_for_bench(args.kafka) as (kafka, tmp):
        print(f"kafka: {kafka.describe()}", flush=True)
        compare_cpu(args, kafka, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

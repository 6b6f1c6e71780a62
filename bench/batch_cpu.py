"""The backend's batch path, CPU per reading, without services: a lever's before and after in one run.

`bench/peers.py` measures the whole worker against Kafka and FerretDB, and its rates move 2-3x with the
load of this shared 2-core box. This bench measures only what the worker's event loop spends per
reading in our code (decode, validate, windows, de-duplication, amendment checks, forwarding to the
place stage and its windows, the batch glue), in a process of its own, as CPU time of that process:
a figure that moves far less with the load. The outputs go to the in-memory stores of
tests/backend/memory.py (MongoDB, Kafka and the tables with the real ones' write semantics), so what
the writer threads, Faust, aiokafka and FerretDB cost is not in it.

Input: `--readings` in the gateway's record format (bench/backend_throughput.py's prefill: `--devices`
devices over `--places` places, a reading a second each), the product's windows (tumbling 60 s,
hopping 300 s every 60 s, grace 10 s, exact), batches of `--batch` records per partition as the
agents take them. Each round runs this tree and, with `--baseline-tree PATH` (e.g. `git worktree add
--detach /tmp/before main`), that tree at the same time, each in a process of its own; it prints each
run's CPU µs per reading, the medians and the median of the rounds' ratios (lower is better: after /
before).

    .venv/bin/python bench/batch_cpu.py [--readings 100000] [--rounds 3] [--baseline-tree /tmp/before]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BASE_TS = 1_750_000_000_000
WINDOWS = {
    "IOT_WINDOW_TUMBLING_S": "60",
    "IOT_WINDOW_HOPPING_S": "300",
    "IOT_WINDOW_HOP_STEP_S": "60",
    "IOT_WINDOW_GRACE_S": "10",
    "IOT_WINDOW_ALLOWED_LATENESS_S": "86400",
}


def child(tree: Path, readings: int, devices: int, places: int, batch: int) -> dict[str, float]:
    """One run in this process over `tree`'s code: CPU seconds of the batch path for every reading."""
    sys.path.insert(0, str(tree))
    import backend  # imported here: from the tree measured
    from iot import contract
    from iot.harness.payloads import reading
    from tests.backend.memory import Pipeline

    if not Path(backend.__file__ or "").resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"measuring {backend.__file__}, not the tree {tree}: check sys.path")

    pipeline = Pipeline(env=WINDOWS, batch_max=batch)
    for seq in range(readings // devices):
        for d in range(devices):
            device = f"bench-d{d}"
            ts = BASE_TS + seq * 1000 + d
            payload = reading(
                f"bench-p{d % places}",
                device,
                seq,
                ts,
                temperature=20 + (seq % 50) / 10,
                humidity=40.0 + (d % 30),
                pressure=1000.5,
                luminosity=100.0 + seq % 7,
                fw="bench",
            )
            pipeline.produce(contract.encode({**payload, "received_at": ts + 5}), device.encode())
    pipeline.now = BASE_TS
    cpu, wall = time.process_time(), time.perf_counter()
    pipeline.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stored = len(pipeline.sink.readings)
    return {"cpu_us": cpu / readings * 1e6, "wall_s": wall, "stored": stored, "load": os.getloadavg()[0]}


def start(tree: Path, args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(tree),
        "--readings",
        str(args.readings),
        "--devices",
        str(args.devices),
        "--places",
        str(args.places),
        "--batch",
        str(args.batch),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tree)


def result(name: str, proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the run failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--places", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10_000, help="records per partition per batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=HERE, help="the source tree measured (default: this one)")
    ap.add_argument("--baseline-tree", type=Path, help="another source tree, measured in the same rounds")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.readings, args.devices, args.places, args.batch)))
        return 0
    trees = {"this tree": args.tree.resolve()}
    if args.baseline_tree is not None:
        trees["baseline"] = args.baseline_tree.resolve()
    results: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.rounds):
        # The trees of a round run at the same time, so that both meet the same load of this shared
        # box (one after the other, a run's CPU per reading moved +-10 % with the load between them).
        procs = {name: start(tree, args) for name, tree in trees.items()}
        for name, proc in procs.items():
            res = result(name, proc)
            if res["stored"] != args.readings // args.devices * args.devices:
                raise SystemExit(f"{name}: {res['stored']:.0f} readings stored, expected every one")
            results[name].append(res["cpu_us"])
            print(
                f"round {r + 1} {name:9s}: {res['cpu_us']:6.1f} us CPU per reading "
                f"({res['wall_s']:.1f} s wall, load {res['load']:.1f})",
                flush=True,
            )
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, m in medians.items():
        print(f"median {name}: {m:.1f} us CPU per reading")
    if "baseline" in medians:
        ratios = [a / b for a, b in zip(results["this tree"], results["baseline"], strict=True)]
        print(f"per round this/baseline: {', '.join(f'{x:.3f}' for x in ratios)}")
        print(f"ratio CPU this/baseline: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`iot gateway` or `iot backend` under tracemalloc, for bench/soak.py --tracemalloc: is a service's
memory growth Python objects (and which lines allocate them) or native (librdkafka, the allocator)?

    python bench/soak_traced.py OUT.jsonl INTERVAL_S gateway|backend

Every INTERVAL_S it appends one JSON line to OUT.jsonl: the process's RSS, tracemalloc's traced total,
and the 15 source lines whose traced memory grew most since the first snapshot (taken after
INTERVAL_S, past start-up). tracemalloc slows the service down: a memory run, not a latency run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from iot.harness.children import rss_kb


def _watch(out: Path, interval: float) -> None:
    time.sleep(interval)  # past start-up: the baseline is the running service
    base = tracemalloc.take_snapshot()
    t0 = time.time()
    while True:
        time.sleep(interval)  # the sampling period, not synchronisation
        snap = tracemalloc.take_snapshot()
        top = snap.compare_to(base, "lineno")[:15]
        current, peak = tracemalloc.get_traced_memory()
        line = {
            "t": round(time.time() - t0, 1),
            "rss_kb": rss_kb(os.getpid()),
            "traced_kb": current // 1024,
            "traced_peak_kb": peak // 1024,
            "top_growth": [
                {"where": str(s.traceback[0]), "kb": s.size_diff // 1024, "count": s.count_diff} for s in top
            ],
        }
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")


def main() -> int:
    out, interval, service = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    tracemalloc.start(1)
    threading.Thread(target=_watch, args=(out, interval), daemon=True).start()
    from iot.app.cli import main as iot_main

    return iot_main([service])


if __name__ == "__main__":
    sys.exit(main())

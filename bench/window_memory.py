"""Memory of the backend's window state per key, measured on the pure engine.

The engine runs the readings untraced (tracemalloc over the whole run is too slow on 2 shared cores and
RSS keeps the batches' garbage); the states it ends with are then rebuilt under tracemalloc exactly as a
worker holds them: the table's JSON value per key and the engine's cached `KeyState`.

What a worker holds per key is what `backend/app.py` holds: the engine's cached `KeyState` (open
windows, watermark, de-duplication seq ranges) and the table's JSON value of it (Faust's memory store,
rebuilt from the changelog at start). Closed windows are not kept (amendments go to MongoDB), so the
figure must not depend on IOT_WINDOW_ALLOWED_LATENESS_S: the run measures it for two values. For
comparison it prints what keeping one day of closed windows per key in memory would cost instead.

    .venv/bin/python bench/window_memory.py [--keys 10000] [--period-s 10] [--span-s 400]

"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

from backend.accumulators import WindowAcc
from backend.engine import Item, ScopeEngine
from backend.records import PLACE, SENSOR
from backend.windows import KeyState, specs_from_seconds

SPECS = specs_from_seconds(60, 300, 60)  # the contract's defaults
GRACE_MS = 10_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % 300_000


def reading(place: str, device: str, seq: int, ts: int) -> dict[str, Any]:
    return {
        "v": 1,
        "device": device,
        "place": place,
        "boot": 3,
        "seq": seq,
        "ts": ts,
        "time_valid": True,
        "temperature": 20.0 + seq % 7 * 0.37,
        "humidity": 40.0 + seq % 5 * 1.1,
        "pressure": 1000.0 + seq % 3 * 0.25,
        "luminosity": 100.0 + seq * 0.5,
        "fw": "1.0.0",
        "received_at": ts,
    }


def measure(
    scope: str, keys: int, per_place: int, period_ms: int, span_ms: int, allowed_ms: int
) -> dict[str, Any]:
    devices = [f"dev-{i:05d}" for i in range(keys * (per_place if scope == PLACE else 1))]
    places = {d: f"place-{i // per_place:05d}" for i, d in enumerate(devices)}
    table: dict[str, Any] = {}  # Faust's memory store: key -> KeyState.to_json()
    engine = ScopeEngine(scope, SPECS, GRACE_MS, 30_000, table.get, 5_000, allowed_ms, 300_000)
    offset = 0
    for step in range(span_ms // period_ms):
        ts = T0 + step * period_ms
        batch: list[Item] = []
        for d in devices:
            batch.append(Item(reading(places[d], d, step, ts), 0, offset))
            offset += 1
        out = engine.process(batch, ts)
        for key, st in out.changed.items():
            table[key] = st.to_json()
        del batch, out
    frozen = json.dumps(table)
    states = list(engine._cache.values())
    open_windows = sum(len(st.windows) for st in states) / len(states)
    json_bytes = sum(len(json.dumps(v)) for v in table.values()) / len(table)
    del table, engine, states
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held = json.loads(frozen)  # the memory store's values
    cache = {k: KeyState.from_json(v) for k, v in held.items()}  # the engine's cache
    last_wall = dict.fromkeys(held, T0)  # and its two per-key wall-clock stamps
    open_written = dict.fromkeys(held, T0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del cache, last_wall, open_written
    return {
        "scope": scope,
        "keys": len(held),
        "devices_per_key": per_place if scope == PLACE else 1,
        "allowed_lateness_s": allowed_ms // 1000,
        "open_windows_per_key": round(open_windows, 2),
        "changelog_value_bytes_per_key": round(json_bytes),
        "memory_mb": round(used / 1e6, 1),
        "memory_bytes_per_key": round(used / len(held)),
    }


def one_acc_bytes() -> int:
    """Size of one WindowAcc with values in every metric (what a closed window kept in memory costs)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    accs = []
    for i in range(10_000):
        acc = WindowAcc()
        for s in range(3):
            acc.add(reading("p", "d", s, T0 + i), s)
        accs.append(acc)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used // len(accs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--period-s", type=float, default=10.0, help="seconds between a board's readings")
    ap.add_argument("--span-s", type=int, default=400, help="event time fed (steady state after 310 s)")
    ap.add_argument("--places-of", type=int, default=10, help="boards per place for the place scope")
    ap.add_argument("--scenario", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scenario:
        scope, allowed = args.scenario.split(":")
        per = args.places_of if scope == PLACE else 1
        keys = args.keys // per
        r = measure(scope, keys, per, int(args.period_s * 1000), args.span_s * 1000, int(allowed) * 1000)
        print(json.dumps(r))
        return 0
    for scenario in (f"{SENSOR}:60", f"{SENSOR}:86400", f"{PLACE}:86400"):
        # One process each, so the figure is not lowered by memory an earlier scenario freed.
        argv = [sys.executable, __file__, "--scenario", scenario, *sys.argv[1:]]
        print(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip(), flush=True)
    acc = one_acc_bytes()
    per_day = 2 * 86_400 // 60  # tumbling 60 s + hopping every 60 s: 2,880 windows a day per key
    print(
        json.dumps(
            {
                "instead_keeping_a_day_of_closed_windows": {
                    "bytes_per_window_acc": acc,
                    "windows_per_key_per_day": per_day,
                    "memory_gb_for_keys": round(acc * per_day * args.keys / 1e9, 1),
                    "keys": args.keys,
                }
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

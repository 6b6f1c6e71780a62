"""The Quix Streams peer of bench/peers.py: the backend's windows as a Quix Streams application.

Runs in its own virtualenv (bench/peers.py setup installs quixstreams there; it is no dependency of
the product). Per sensor (the record key, the device) and per place (re-keyed with `group_by`, a
repartition topic), a tumbling window of 60 s and a hopping window of 300 s every 60 s, event time
from the reading's `ts`, count and count/mean/min/max of the four metrics (per place also the
distinct devices), one `reduce` per window. Windows are emitted downstream when final and go to one
output topic. Late window updates (after the grace) are counted by the windows' `on_late` callback.

Prints `progress <epoch ms> <sensor readings> <place readings> <dropped sensor window updates>
<dropped place window updates> RUNNING` every 250 ms, the format of the Kafka Streams peer.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

from quixstreams import Application

METRICS = ("temperature", "humidity", "pressure", "luminosity")
counts = {"sensor": 0, "place": 0}
dropped = {"sensor": 0, "place": 0}


def initializer(devices: bool) -> Any:
    def init(reading: dict[str, Any]) -> list[Any]:
        return add([0, [[0, 0.0, None, None] for _ in METRICS], []], reading, devices)

    return init


def add(agg: list[Any], reading: dict[str, Any], devices: bool) -> list[Any]:
    agg[0] += 1
    for acc, name in zip(agg[1], METRICS, strict=True):
        value = reading.get(name)
        if value is None:
            continue
        acc[0] += 1
        acc[1] += value
        acc[2] = value if acc[2] is None or value < acc[2] else acc[2]
        acc[3] = value if acc[3] is None or value > acc[3] else acc[3]
    if devices and reading["device"] not in agg[2]:
        agg[2].append(reading["device"])
    return agg


def windows(sdf: Any, scope: str, args: argparse.Namespace, output: Any) -> None:
    devices = scope == "place"

    def on_late(*_: Any, **__: Any) -> bool:
        dropped[scope] += 1
        return False  # counted here; no log line per late update

    def reduce(agg: list[Any], reading: dict[str, Any]) -> list[Any]:
        return add(agg, reading, devices)

    for kind, size, step in (
        ("tumbling", args.tumbling_ms, args.tumbling_ms),
        ("hopping", args.hopping_ms, args.hop_step_ms),
    ):
        name = f"{scope}-{kind}"
        if kind == "tumbling":
            window = sdf.tumbling_window(size, grace_ms=args.grace_ms, name=name, on_late=on_late)
        else:
            window = sdf.hopping_window(size, step, grace_ms=args.grace_ms, name=name, on_late=on_late)
        window.reduce(reduce, initializer(devices)).final().to_topic(output)


def report() -> None:
    while True:
        print(
            f"progress {time.time_ns() // 1_000_000} {counts['sensor']} {counts['place']}"
            f" {dropped['sensor']} {dropped['place']} RUNNING",
            flush=True,
        )
        time.sleep(0.25)


def main() -> int:
    ap = argparse.ArgumentParser()
    for name in ("bootstrap", "source", "output", "app-id", "state-dir"):
        ap.add_argument(f"--{name}", required=True)
    for name, default in (
        ("grace-ms", None),
        ("commit-ms", 1000),
        ("partitions", 6),
        ("tumbling-ms", 60_000),
        ("hopping-ms", 300_000),
        ("hop-step-ms", 60_000),
    ):
        ap.add_argument(f"--{name}", type=int, default=default, required=default is None)
    args = ap.parse_args()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.app_id,
        auto_offset_reset="earliest",
        commit_interval=args.commit_ms / 1000,
        state_dir=args.state_dir,
        loglevel="WARNING",
        processing_guarantee="at-least-once",
    )
    source = app.topic(
        args.source,
        key_deserializer="str",
        value_deserializer="json",
        timestamp_extractor=lambda value, _headers, _ts, _ts_type: value["ts"],
    )
    output = app.topic(args.output, value_serializer="json", key_serializer="json")
    sdf = app.dataframe(source)

    def count(scope: str) -> Any:
        def seen(_value: Any) -> None:
            counts[scope] += 1

        return seen

    sensor = sdf.update(count("sensor"))
    windows(sensor, "sensor", args, output)
    by_place = sdf.group_by("place", name="by-place").update(count("place"))
    windows(by_place, "place", args, output)
    threading.Thread(target=report, daemon=True).start()
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

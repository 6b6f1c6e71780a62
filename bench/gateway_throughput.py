"""Gateway throughput, measured against raw Mosquitto QoS 1 pass-through in the same run.

    .venv/bin/python bench/gateway_throughput.py [--messages 60000] [--gateways 1] [--publishers 1]
        [--kafka private | private-sasl | shared] [--profile DIR] [--tree PATH]

Prints, for ~190-byte payload v1 readings on this machine:
  (a) raw pass-through: one publisher process → Mosquitto → one paho subscriber process, QoS 1;
  (b) live: the same publisher → Mosquitto → `iot gateway` (N processes, one shared group) →
      Kafka acks=all, rate = readings confirmed by Kafka per second;
  (c) backlog drain: N readings queued in the broker for the gateways' sessions while they are down,
      then drained → the gateway's own sustained rate, independent of the publisher;
and the ratios (b)/(a) and (c)/(a); for (c) also the gateways' peak resident memory and the most
readings they held in flight at once (`iot_gateway_in_flight_peak`; a tree without it: the most seen by
polls every 0.5 s, a lower bound). `--tree PATH` runs the gateways from another source tree of this
repository (e.g. `git worktree add --detach /tmp/before main`), for before/after runs. Every load
generator runs in its own process, never inside the measured one. By default the gateways write to
a private single-node Kafka (started through the stack module on free ports) so the bench never
floods the shared stack's iot.readings; `private-sasl` puts the gateways and the bench's own reader
on its SASL_SSL listener (SCRAM-SHA-512 over TLS), `shared` on the stack's Kafka as the IOT_KAFKA_*
variables say.

What a reading costs the gateway's CPU at a fleet's pace, beside another tree's gateway:
bench/gateway_cpu.py. What both benchmarks use (load generators, gateway processes, their Kafka):
bench/gateway_load.py.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer
from gateway_load import Gateways, add_gateway_arguments, kafka_for_bench, publish, result, spawn_child, uid

from iot import contract
from iot.harness.kafka import end_offsets
from iot.kafka import KafkaConnection


def measure_raw(count: int, devices: int, publishers: int) -> float:
    place = uid("benchraw")
    sub = spawn_child("_subscribe", place, str(count))
    assert sub.stdout is not None
    assert sub.stdout.readline().strip() == "subscribed"
    publish(place, devices, count, publishers)
    got = result(sub)
    if got["count"] != count:
        raise SystemExit(f"raw subscriber received {got['count']} of {count}")
    return count / (got["last"] - got["first"])


class KafkaSpan:
    """Marks where iot.readings ends, then times the next `count` bench records by their Kafka
    CreateTime (set by the gateway's producer): exact, and costs the gateways nothing while they run."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self._consumer = Consumer(
            {**kafka.librdkafka(), "group.id": uid("bench-span"), "enable.auto.commit": False}
        )
        self._start = end_offsets(self._consumer, contract.TOPIC_READINGS, timeout=15)

    def rate(self, count: int, timeout: float = 120) -> float:
        self._consumer.assign(self._start)
        stamps: list[int] = []
        deadline = time.time() + timeout
        while len(stamps) < count and time.time() < deadline:
            for message in self._consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is None and (message.key() or b"").startswith(b"bench"):
                    stamps.append(message.timestamp()[1])
        self._consumer.close()
        if len(stamps) < count:
            raise SystemExit(f"found {len(stamps)} of {count} bench records in Kafka")
        return (count - 1) / ((max(stamps) - min(stamps)) / 1000)


def measure_live(
    gws: Gateways, count: int, devices: int, publishers: int, kafka: KafkaConnection
) -> tuple[float, float]:
    span = KafkaSpan(kafka)
    base = gws.totals("iot_gateway_produced_total")
    rate: list[float] = []
    pub = threading.Thread(target=lambda: rate.append(publish(gws.place, devices, count, publishers)))
    pub.start()
    gws.wait_produced(base + count)
    pub.join()
    return span.rate(count), rate[0]


def measure_drain(
    gws: Gateways, count: int, devices: int, publishers: int, kafka: KafkaConnection
) -> tuple[float, str]:
    gws.stop()
    publish(gws.place, devices, count, publishers)
    span = KafkaSpan(kafka)
    gws.start()
    spies = gws.start_profilers()
    gws.in_flight_seen = 0.0
    gws.wait_produced(count)
    gws.stop_profilers(spies)
    peak = gws.totals("iot_gateway_in_flight_peak")
    held = f"{peak:,.0f} (iot_gateway_in_flight_peak)" if peak else f">= {gws.in_flight_seen:,.0f} (polled)"
    return span.rate(count), f"peak RSS {gws.peak_rss_mb():,.0f} MB, most in flight {held}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=60_000, help="readings per measurement")
    add_gateway_arguments(parser)
    parser.add_argument("--tree", type=Path, default=None, help="run the gateways from this source tree")
    args = parser.parse_args()
    if args.tree is not None and not (args.tree / "gateway").is_dir():
        parser.error("--tree needs a source tree of this repository (with gateway/)")
    with kafka_for_bench(args.kafka) as (kafka, tmp):
        count = args.messages - args.messages % args.publishers
        raw = measure_raw(count, args.devices, args.publishers)
        print(
            f"(a) raw Mosquitto QoS 1 pass-through : {raw:9,.0f} msg/s  "
            f"({count} messages, {args.publishers} publisher(s))",
            flush=True,
        )
        print(f"kafka: {kafka.describe()}", flush=True)
        tree = args.tree.resolve() if args.tree is not None else None
        gws = Gateways(args.gateways, uid("benchp"), kafka, tmp, args.max_in_flight, args.profile, tree)
        try:
            gws.start()
            live, pub_rate = measure_live(gws, count, args.devices, args.publishers, kafka)
            print(
                f"(b) gateway live MQTT→Kafka acks=all : {live:9,.0f} readings/s  "
                f"({args.gateways} process(es), publishers ran at {pub_rate:,.0f}/s, split {gws.shares()})",
                flush=True,
            )
            drain, held = measure_drain(gws, count, args.devices, args.publishers, kafka)
            print(f"(c) gateway backlog drain            : {drain:9,.0f} readings/s  ({held})", flush=True)
        finally:
            gws.stop()
            gws.discard_sessions()
    gws.print_profiles()
    print(f"ratio live/raw  = {live / raw:.2f}")
    print(f"ratio drain/raw = {drain / raw:.2f}")
    print("target: >= 30,000 readings/s and >= 0.50 of raw pass-through")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

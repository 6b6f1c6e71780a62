"""Gateway throughput, measured against raw Mosquitto QoS 1 pass-through in the same run.

    .venv/bin/python bench/gateway_throughput.py [--messages 60000] [--gateways 1]
        [--kafka private | private-sasl | shared]
    .venv/bin/python bench/gateway_throughput.py --cpu [--baseline-tree PATH] [--rate 1000]
        [--seconds 20] [--rounds 3] [--devices 2000]

Prints, for ~190-byte payload v1 readings on this machine:
  (a) raw pass-through: one publisher process → Mosquitto → one paho subscriber process, QoS 1;
  (b) live: the same publisher → Mosquitto → `iot gateway` (N processes, one shared group) →
      Kafka acks=all, rate = readings confirmed by Kafka per second;
  (c) backlog drain: N readings queued in the broker for the gateways' sessions while they are down,
      then drained → the gateway's own sustained rate, independent of the publisher;
and the ratios (b)/(a) and (c)/(a). Every load generator runs in its own process, never inside the
measured one. By default the gateways write to a private single-node Kafka (started through the stack
module on free ports) so the bench never floods the shared stack's iot.readings; `private-sasl` puts the
gateways and the bench's own reader on its SASL_SSL listener (SCRAM-SHA-512 over TLS), `shared` on the
stack's Kafka as the IOT_KAFKA_* variables say.

`--cpu` measures instead what a reading costs the gateway at a fleet's pace, the figure that matters
when the gateway shares the box with the backend (bench/soak.py): publishers paced at `--rate`
readings/s for `--seconds` from `--devices` boards (one end-to-end ack message per board per flush,
as in the soak), and the gateway process's CPU (user + system, all its threads, from /proc) over that
span, divided by the readings. With `--baseline-tree PATH` (another source tree of this repository,
e.g. `git worktree add --detach /tmp/before main`) a second gateway runs that tree's code beside this
one, each on a place of its own with publishers of its own, both at once in every round, so the ratio
current/baseline is taken over the same seconds on this shared box (runs a minute apart differed by
+-15 % on their own). Prometheus is scraped
only after the publishers finished (a scrape renders every board's series: gateway CPU too).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer
from paho.mqtt.enums import CallbackAPIVersion

from iot import contract
from iot.env import stack_dir
from iot.harness.children import Child, cpu_s, gateway_connected
from iot.harness.kafka import end_offsets
from iot.harness.mqtt import MqttLogin
from iot.harness.payloads import reading
from iot.harness.ports import free_port, free_ports
from iot.harness.stack import private_services
from iot.kafka import KafkaConnection

REPO = Path(__file__).resolve().parents[1]

BROKER = MqttLogin.from_env()
# Un-acked publishes a publisher keeps, below Mosquitto's receive maximum (max_inflight_messages).
# The window is ours, not paho's: paho's own in-flight limit rescans every pending message on each
# PUBACK (quadratic), which capped the publisher at ~5k/s.
PUBLISH_WINDOW = 500


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- child roles (run in their own processes) ---------------------------------------------------


def _payloads(place: str, devices: int, count: int, part: int) -> Iterator[tuple[str, bytes]]:
    names = [f"bench{part}x{d:03d}" for d in range(devices)]
    ts = int(time.time() * 1000)
    for i in range(count):
        device = names[i % devices]
        payload = reading(
            place,
            device,
            i // devices,
            ts + i,
            boot=1,
            temperature=21.37,
            humidity=45.12,
            pressure=1012.55,
            luminosity=312.5,
            fw="bench-1.0.0",
        )
        yield contract.reading_topic(place, device), json.dumps(payload).encode()


def child_publish(place: str, devices: int, count: int, part: int, rate: float = 0.0) -> None:
    """Publish `count` readings at QoS 1, as fast as the broker takes them or paced at `rate`/s."""
    client = BROKER.client(_uid("bench-pub"), max_inflight=0)
    pending: deque[mqtt.MQTTMessageInfo] = deque()
    started = time.time()
    for i, (topic, payload) in enumerate(_payloads(place, devices, count, part)):
        if rate and i % 10 == 0:
            # Paced in steps of ten readings: a fleet's boards publish spread over each second.
            ahead = started + i / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        pending.append(client.publish(topic, payload, qos=1))
        if len(pending) >= PUBLISH_WINDOW:
            pending.popleft().wait_for_publish(60)
    while pending:
        pending.popleft().wait_for_publish(60)
    finished = time.time()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"count": count, "started": started, "finished": finished}), flush=True)


def child_subscribe(place: str, count: int) -> None:
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(_c: Any, _u: Any, _m: mqtt.MQTTMessage) -> None:
        now = time.time()
        if state["n"] == 0:
            state["first"] = now
        state["n"] += 1
        state["last"] = now

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_uid("bench-sub"), protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: print("subscribed", flush=True)
    client.connect(*BROKER.prepare(client))
    client.subscribe(f"sensors/{place}/+/reading", qos=1)
    deadline = time.time() + 300
    while state["n"] < count and time.time() < deadline:
        client.loop(0.5)
    client.disconnect()
    print(json.dumps({"count": state["n"], "first": state["first"], "last": state["last"]}), flush=True)


# --- orchestration ------------------------------------------------------------------------------


def _spawn_child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)


def _result(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _publish(place: str, devices: int, count: int, publishers: int, rate: float = 0.0) -> float:
    """Publish `count` readings from `publishers` processes (paced at `rate`/s together, 0: as fast
    as they can); returns their combined rate."""
    share = count // publishers
    procs = [
        _spawn_child("_publish", place, str(devices), str(share), str(part), str(rate / publishers))
        for part in range(publishers)
    ]
    results = [_result(p) for p in procs]
    started = min(r["started"] for r in results)
    finished = max(r["finished"] for r in results)
    return share * publishers / (finished - started)


def measure_raw(count: int, devices: int, publishers: int) -> float:
    place = _uid("benchraw")
    sub = _spawn_child("_subscribe", place, str(count))
    assert sub.stdout is not None
    assert sub.stdout.readline().strip() == "subscribed"
    _publish(place, devices, count, publishers)
    got = _result(sub)
    if got["count"] != count:
        raise SystemExit(f"raw subscriber received {got['count']} of {count}")
    return count / (got["last"] - got["first"])


class Gateways:
    def __init__(
        self,
        n: int,
        place: str,
        kafka: KafkaConnection,
        log_dir: Path,
        max_in_flight: int,
        profile: Path | None,
        tree: Path | None = None,
    ) -> None:
        self.place = place
        self.profile = profile
        self.profiled: list[Path] = []
        group = _uid("benchgw")
        self.gateways = []
        for i in range(n):
            port = free_port()
            env = {
                **os.environ,
                **kafka.env(),
                "IOT_GATEWAY_CLIENT_ID": f"{group}-{i}",
                "IOT_GATEWAY_GROUP": group,
                "IOT_GATEWAY_TOPIC_FILTER": f"sensors/{place}/+/reading",
                "IOT_GATEWAY_METRICS_PORT": str(port),
                "IOT_GATEWAY_MAX_IN_FLIGHT": str(max_in_flight),
                "IOT_GATEWAY_SESSION_EXPIRY_S": "900",
                # Another source tree's packages first on the path (the venv's own are an editable
                # install's finder, which Python asks after the path).
                # (and this tree's stack: its credentials file is found under IOT_STACK_DIR).
                **({"PYTHONPATH": str(tree), "IOT_STACK_DIR": str(stack_dir())} if tree is not None else {}),
            }
            log = log_dir / f"{group}-{i}.log"
            self.gateways.append(Child.iot(f"{group}-{i}", ["gateway"], log, env=env, metrics_port=port))
        self.log_dir = log_dir

    def start(self) -> float:
        """Start the gateways; returns when the first of them was seen subscribed (±20 ms)."""
        for gateway in self.gateways:
            gateway.start()
        deadline = time.time() + 60
        first = 0.0
        while True:
            up = [gateway_connected(gateway) for gateway in self.gateways]
            if any(up) and not first:
                first = time.time()
            if all(up):
                return first
            if time.time() > deadline:
                raise SystemExit(f"gateways did not connect; logs in {self.log_dir}")
            time.sleep(0.02)

    def start_profilers(self) -> list[subprocess.Popen[bytes]]:
        """py-spy on every gateway, all threads (paho's network thread does the per-message work)."""
        if self.profile is None:
            return []
        self.profile.mkdir(parents=True, exist_ok=True)
        spies = []
        for gateway in self.gateways:
            out = self.profile / f"gateway-{gateway.pid}.txt"
            self.profiled.append(out)
            spies.append(
                subprocess.Popen(
                    [
                        os.environ.get("PY_SPY", "py-spy"),
                        "record",
                        "--nonblocking",
                        "--format",
                        "raw",
                        "--rate",
                        "250",
                        "-p",
                        str(gateway.pid),
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return spies

    @staticmethod
    def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=60)

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop(60)

    def discard_sessions(self) -> None:
        for gateway in self.gateways:
            BROKER.forget_session(gateway.env["IOT_GATEWAY_CLIENT_ID"])

    def cpu_s(self) -> float:
        """CPU seconds the gateway processes used so far (user + system, every thread)."""
        return sum(cpu_s(gateway.pid) or 0.0 for gateway in self.gateways)

    def totals(self, name: str) -> float:
        return sum(gateway.metric(name) or 0.0 for gateway in self.gateways)

    def shares(self) -> list[int]:
        return [int(gateway.metric("iot_gateway_produced_total") or 0) for gateway in self.gateways]

    def wait_produced(self, target: float, timeout: float = 600) -> tuple[float, float]:
        """Poll until `target` readings were confirmed; returns (first receive seen, done) times."""
        first = 0.0
        deadline = time.time() + timeout
        while time.time() < deadline:
            now = time.time()
            if not first and self.totals("iot_gateway_received_total") > 0:
                first = now
            if self.totals("iot_gateway_produced_total") >= target:
                return first, now
            # Scraping costs the gateway CPU: poll gently; the rate itself comes from Kafka timestamps.
            time.sleep(0.5)
        raise SystemExit(f"gateways confirmed {self.totals('iot_gateway_produced_total')} of {target}")


class KafkaSpan:
    """Marks where iot.readings ends, then times the next `count` bench records by their Kafka
    CreateTime (set by the gateway's producer): exact, and costs the gateways nothing while they run."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self._consumer = Consumer(
            {**kafka.librdkafka(), "group.id": _uid("bench-span"), "enable.auto.commit": False}
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
    pub = threading.Thread(target=lambda: rate.append(_publish(gws.place, devices, count, publishers)))
    pub.start()
    gws.wait_produced(base + count)
    pub.join()
    return span.rate(count), rate[0]


def measure_drain(gws: Gateways, count: int, devices: int, publishers: int, kafka: KafkaConnection) -> float:
    gws.stop()
    _publish(gws.place, devices, count, publishers)
    span = KafkaSpan(kafka)
    gws.start()
    spies = gws.start_profilers()
    gws.wait_produced(count)
    gws.stop_profilers(spies)
    return span.rate(count)


def measure_cpu(gws: Gateways, count: int, devices: int, publishers: int, rate: float) -> tuple[float, float]:
    """(CPU µs per reading, achieved rate) of the gateways for `count` readings paced at `rate`/s."""
    base = gws.totals("iot_gateway_produced_total")
    before = gws.cpu_s()
    pub_rate = _publish(gws.place, devices, count, publishers, rate)
    gws.wait_produced(base + count)
    used = gws.cpu_s() - before
    return used / count * 1e6, pub_rate


def compare_cpu(args: argparse.Namespace, kafka: KafkaConnection, tmp: Path) -> None:
    """Paced runs of this tree's gateway and, with --baseline-tree, the baseline's beside it."""
    count = int(args.rate * args.seconds)
    variants: dict[str, Gateways] = {
        "current": Gateways(args.gateways, _uid("benchc"), kafka, tmp, args.max_in_flight, args.profile)
    }
    if args.baseline_tree is not None:
        variants["baseline"] = Gateways(
            args.gateways, _uid("benchb"), kafka, tmp, args.max_in_flight, None, args.baseline_tree.resolve()
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
    for path in variants["current"].profiled:
        print(f"profile: {path}")
        print(_top_self_time(path))
    for name, values in results.items():
        print(f"median {name:8s}: {statistics.median(values):7.1f} µs CPU per reading")
    if ratios:
        print(f"ratio current/baseline (median of rounds): {statistics.median(ratios):.2f}")


def _top_self_time(path: Path, top: int = 15) -> str:
    """Summarise a py-spy raw (collapsed) profile: the frames where samples were taken, by share."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(n)
        total += int(n)
    rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"  {100 * n / max(total, 1):5.1f}%  {leaf}" for leaf, n in rows)


@contextmanager
def kafka_for_bench(kind: str, folder: Path) -> Iterator[KafkaConnection]:
    """shared: the stack's Kafka as IOT_KAFKA_* say (security included); private: a Kafka of its own;
    private-sasl: the same through its SASL_SSL listener (SCRAM-SHA-512 over TLS), every client of the
    benchmark included, so the figure says what SASL_SSL costs the gateway."""
    if kind == "shared":
        yield KafkaConnection.from_env()
        return
    plain, controller, sasl = free_ports(3)
    variables = {
        "IOT_KAFKA_BOOTSTRAP": f"127.0.0.1:{plain}",
        "IOT_KAFKA_CONTROLLER_PORT": str(controller),
        "IOT_KAFKA_HEAP": "512m",
        "IOT_KAFKA_SASL_PORT": str(sasl) if kind == "private-sasl" else "0",
    }
    with private_services(folder / "stack", ["kafka"], variables) as stack:
        yield stack.kafka(sasl=kind == "private-sasl")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes in one shared group")
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes (load generators)")
    parser.add_argument("--max-in-flight", type=int, default=5000)
    parser.add_argument("--kafka", choices=("private", "private-sasl", "shared"), default="private")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="folder for py-spy profiles of the gateways (py-spy on PATH, or PY_SPY=its path)",
    )
    parser.add_argument("--cpu", action="store_true", help="paced CPU per reading instead (module doc)")
    parser.add_argument("--rate", type=float, default=1000.0, help="--cpu: readings/s, all publishers")
    parser.add_argument("--seconds", type=float, default=20.0, help="--cpu: length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="--cpu: rounds (each runs every tree once)")
    parser.add_argument(
        "--baseline-tree", type=Path, default=None, help="--cpu: another source tree to compare with"
    )
    args = parser.parse_args()
    if args.baseline_tree is not None and not (args.baseline_tree / "gateway").is_dir():
        parser.error("--baseline-tree needs a source tree of this repository (with gateway/)")

    if args.cpu:
        with (
            tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp,
            kafka_for_bench(args.kafka, Path(tmp)) as kafka,
        ):
            print(f"kafka: {kafka.describe()}", flush=True)
            compare_cpu(args, kafka, Path(tmp))
        return 0

    with (
        tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp,
        kafka_for_bench(args.kafka, Path(tmp)) as kafka,
    ):
        count = args.messages - args.messages % args.publishers
        raw = measure_raw(count, args.devices, args.publishers)
        print(
            f"(a) raw Mosquitto QoS 1 pass-through : {raw:9,.0f} msg/s  "
            f"({count} messages, {args.publishers} publisher(s))",
            flush=True,
        )
        print(f"kafka: {kafka.describe()}", flush=True)
        gws = Gateways(args.gateways, _uid("benchp"), kafka, Path(tmp), args.max_in_flight, args.profile)
        try:
            gws.start()
            live, pub_rate = measure_live(gws, count, args.devices, args.publishers, kafka)
            print(
                f"(b) gateway live MQTT→Kafka acks=all : {live:9,.0f} readings/s  "
                f"({args.gateways} process(es), publishers ran at {pub_rate:,.0f}/s, split {gws.shares()})",
                flush=True,
            )
            drain = measure_drain(gws, count, args.devices, args.publishers, kafka)
            print(f"(c) gateway backlog drain            : {drain:9,.0f} readings/s", flush=True)
        finally:
            gws.stop()
            gws.discard_sessions()
    for path in gws.profiled:
        print(f"profile: {path}")
        print(_top_self_time(path))
    print(f"ratio live/raw  = {live / raw:.2f}")
    print(f"ratio drain/raw = {drain / raw:.2f}")
    print("target: >= 30,000 readings/s and >= 0.50 of raw pass-through")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_publish":
        child_publish(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_subscribe":
        child_subscribe(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())

"""The gateway benchmarks' parts (bench/gateway_throughput.py, bench/gateway_cpu.py): load generators
in processes of their own, the gateways under test, a Kafka for them, and a py-spy summary.

Every load generator runs in its own process, never inside the measured one: this file is also their
entry point (`python bench/gateway_load.py _publish|_subscribe ...`, started by `spawn_child`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iot import contract
from iot.env import stack_dir
from iot.harness.children import Child, cpu_s, gateway_connected
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


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both gateway benchmarks take: the load, the gateways and their Kafka."""
    parser.add_argument("--devices", type=int, default=100, help="boards the readings come from")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes in one shared group")
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes (load generators)")
    parser.add_argument("--max-in-flight", type=int, default=5000, help="IOT_GATEWAY_MAX_IN_FLIGHT")
    parser.add_argument("--kafka", choices=("private", "private-sasl", "shared"), default="private")
    profile_help = "folder for py-spy profiles of the gateways (py-spy on PATH, or PY_SPY=its path)"
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help=profile_help)


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
    client = BROKER.client(uid("bench-pub"), max_inflight=0)
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

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uid("bench-sub"), protocol=mqtt.MQTTv5)
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


def spawn_child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)


def result(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


def publish(place: str, devices: int, count: int, publishers: int, rate: float = 0.0) -> float:
    """Publish `count` readings from `publishers` processes (paced at `rate`/s together, 0: as fast
    as they can); returns their combined rate."""
    share = count // publishers
    procs = [
        spawn_child("_publish", place, str(devices), str(share), str(part), str(rate / publishers))
        for part in range(publishers)
    ]
    results = [result(p) for p in procs]
    started = min(r["started"] for r in results)
    finished = max(r["finished"] for r in results)
    return share * publishers / (finished - started)


class Gateways:
    """`n` gateway processes in one shared group, reading one place's readings; with `tree`, that
    source tree's code instead of this one's."""

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
        group = uid("benchgw")
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
        self.in_flight_seen = 0.0  # the most readings in flight seen by wait_produced's polls

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

    def peak_rss_mb(self) -> float:
        """The largest peak resident memory (VmHWM) of the running gateway processes, MB."""
        peaks = [0]
        for gateway in self.gateways:
            with contextlib.suppress(OSError, TypeError):
                status = Path(f"/proc/{gateway.pid}/status").read_text()
                peaks += [int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")]
        return max(peaks) / 1024

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
            self.in_flight_seen = max(self.in_flight_seen, self.totals("iot_gateway_in_flight"))
            # Scraping costs the gateway CPU: poll gently; the rate itself comes from Kafka timestamps.
            time.sleep(0.5)
        raise SystemExit(f"gateways confirmed {self.totals('iot_gateway_produced_total')} of {target}")

    def print_profiles(self) -> None:
        """Where each profiled gateway's samples were taken (once its profiler stopped)."""
        for path in self.profiled:
            print(f"profile: {path}")
            print(top_self_time(path))


def top_self_time(path: Path, top: int = 15) -> str:
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
def kafka_for_bench(kind: str) -> Iterator[tuple[KafkaConnection, Path]]:
    """The gateways' Kafka, and a scratch folder (the gateways' logs) removed after it.
    shared: the stack's Kafka as IOT_KAFKA_* say (security included); private: a Kafka of its own;
    private-sasl: the same through its SASL_SSL listener (SCRAM-SHA-512 over TLS), every client of the
    benchmark included, so the figure says what SASL_SSL costs the gateway."""
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        folder = Path(tmp)
        if kind == "shared":
            yield KafkaConnection.from_env(), folder
            return
        plain, controller, sasl = free_ports(3)
        variables = {
            "IOT_KAFKA_BOOTSTRAP": f"127.0.0.1:{plain}",
            "IOT_KAFKA_CONTROLLER_PORT": str(controller),
            "IOT_KAFKA_HEAP": "512m",
            "IOT_KAFKA_SASL_PORT": str(sasl) if kind == "private-sasl" else "0",
        }
        with private_services(folder / "stack", ["kafka"], variables) as stack:
            yield stack.kafka(sasl=kind == "private-sasl"), folder


if __name__ == "__main__":
    if sys.argv[1] == "_publish":
        child_publish(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    elif sys.argv[1] == "_subscribe":
        child_subscribe(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} _publish|_subscribe ... (started by the gateway benchmarks)")

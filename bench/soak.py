"""Fleet soak with faults: SIGKILL every component under load, then account for every reading.

    .venv/bin/python bench/soak.py [--devices 2000] [--rate 1.0] [--minutes 10] [--places 20]
                                   [--gateways 2] [--faults all] [--json soak.json]

Runs on its OWN PRIVATE STACK (Mosquitto, Kafka, FerretDB started through the stack module in a temp
IOT_STACK_DIR on free ports), never the shared one: it kills services. On it: `--gateways` gateway
processes in one shared group, one backend, and fleet processes (bench/soak_fleet.py) of
firmware-like boards: QoS 1, (device, boot, seq) ids, every reading kept until the gateway's
end-to-end ack covers it, re-sent after a reconnect or an ack timeout.

Fault schedule (each once, one after another, each brought back after `--pause` seconds): SIGKILL of
one gateway, the backend, Kafka, Mosquitto, the MongoDB-wire server (FerretDB), and a network outage
seen by every board. A gateway or backend that exits on its own is restarted (as systemd would) and
reported as an unplanned exit.

At the end: the boards stop measuring, re-send until everything is acked, the backend catches up and
the windows go final; then every reading is accounted for: published, stored in `readings` once,
missing, doubled (Kafka holds duplicates by design; counted, and they must not reach a window twice),
and every final window (sensor and place, tumbling and hopping) is recomputed from the stored readings
and compared. Also: sustained throughput, latency ts → Kafka (first copy, read by a consumer here) and
ts → final tumbling window (p50/p99, all and outside the fault windows), board-seen ack latency,
backend consumer lag over time, each service's RSS at start (after warm-up) and end. A table on the
terminal and a JSON summary (`--json`). Exit status 1 when anything was lost, doubled or a window
differs.

Figures depend on the machine: this one has 2 cores shared with other work; say so with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import soak_report  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from iot import contract  # noqa: E402
from iot.app.stack.config import StackConfig  # noqa: E402
from iot.app.stack.manager import Stack  # noqa: E402

HOST = "127.0.0.1"
IOT = str(REPO / ".venv" / "bin" / "iot")
PYTHON = sys.executable
FAULTS = ("gateway", "backend", "kafka", "mosquitto", "ferretdb", "boards")
STACK_SERVICES = ("mosquitto", "kafka", "ferretdb")
BACKEND_APP = "soak-backend"
DATABASE = "soak"


def log(event: str, **fields: Any) -> None:
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} soak {event} {parts}\n")
    sys.stderr.flush()


def poll_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> bool:
    """Poll with a deadline; False (logged) when it passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    log("timeout", waiting_for=what.replace(" ", "_"), seconds=timeout)
    return False


def free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the soak dies, so a killed soak leaves no gateway,
    backend or fleet behind (the stack's own services it stops in its `finally`)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def metric(url: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# --- the product's services as child processes -------------------------------------------------


@dataclass
class Service:
    """`iot gateway` / `iot backend`, restartable, with its log in the soak folder."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[Service], bool]
    proc: subprocess.Popen[bytes] | None = None
    planned_down: bool = False
    starts: int = 0
    unplanned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 120.0) -> bool:
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [IOT, *self.args],
                env=self.env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        ok = poll_until(
            lambda: self.proc is not None and self.proc.poll() is None and self.ready(self),
            timeout,
            f"{self.name} ready",
        )
        self.planned_down = False
        return ok

    def kill9(self) -> None:
        self.planned_down = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.planned_down = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# --- fleet processes -------------------------------------------------------------------------------


class FleetProc:
    def __init__(self, index: int, boards: list[tuple[str, str]], cfg: dict[str, Any], folder: Path) -> None:
        self.index = index
        self.boards = boards
        self.out = folder / f"fleet{index}.json"
        config = {**cfg, "boards": boards, "out": str(self.out)}
        conf_path = folder / f"fleet{index}.conf.json"
        conf_path.write_text(json.dumps(config))
        self.log = (folder / f"fleet{index}.log").open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, str(REPO / "bench" / "soak_fleet.py"), str(conf_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            preexec_fn=_die_with_parent,
        )
        self.stats: dict[str, Any] = {}
        self.final = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("final"):
                self.final.set()
            else:
                self.stats = data

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        self.command("quit")
        self.final.wait(timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


# --- what Kafka holds, as seen by a consumer of our own ------------------------------------------


class KafkaWatch(threading.Thread):
    """Reads iot.readings and the DLQ from the beginning: first-copy latency ts → Kafka, duplicates."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "soak-watch",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                # The latency measured here includes this consumer's fetch wait: keep it small.
                "fetch.wait.max.ms": 20,
                "log_level": 0,
            }
        )
        self.stop_event = threading.Event()
        self.seen: dict[str, bytearray] = {}
        self.records = 0
        self.duplicates = 0
        self.dlq = 0
        self.ts = array("q")
        self.latency = array("q")
        self.per_second: dict[int, int] = {}

    def run(self) -> None:
        parts: list[TopicPartition] = []
        for topic in (contract.TOPIC_READINGS, contract.TOPIC_DLQ):
            meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self.consumer.assign(parts)
        while not self.stop_event.is_set():
            messages = self.consumer.consume(num_messages=5000, timeout=0.2)
            now = time.time_ns() // 1_000_000
            for msg in messages:
                if msg.error() is not None:
                    continue
                if msg.topic() == contract.TOPIC_DLQ:
                    self.dlq += 1
                    continue
                value = json.loads(msg.value())
                self.records += 1
                seqs = self.seen.get(value["device"])
                if seqs is None:
                    seqs = self.seen[value["device"]] = bytearray()
                seq = value["seq"]
                if seq >= len(seqs):
                    seqs.extend(bytes(seq + 1024 - len(seqs)))
                if seqs[seq]:
                    self.duplicates += 1
                    continue
                seqs[seq] = 1
                self.ts.append(value["ts"])
                self.latency.append(now - value["ts"])
                second = now // 1000
                self.per_second[second] = self.per_second.get(second, 0) + 1
        self.consumer.close()

    def distinct(self) -> int:
        return len(self.ts)


# --- the soak ------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    target: str
    killed_at: float = 0.0
    back_at: float = 0.0
    ok: bool = True


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        mqtt, kafka, ctrl, mongo, prom, node, fdbg = free_ports(7)
        self.stack_env = {
            "IOT_STACK_DIR": str(folder / "stack"),
            "IOT_MQTT_URL": f"mqtt://{HOST}:{mqtt}",
            "IOT_KAFKA_BOOTSTRAP": f"{HOST}:{kafka}",
            "IOT_KAFKA_CONTROLLER_PORT": str(ctrl),
            "IOT_MONGO_URI": f"mongodb://{HOST}:{mongo}/{DATABASE}",
            "IOT_PROMETHEUS_PORT": str(prom),
            "IOT_NODE_EXPORTER_PORT": str(node),
            "IOT_FERRETDB_DEBUG_PORT": str(fdbg),
            "IOT_KAFKA_HEAP": args.kafka_heap,
            "IOT_CACHE_DIR": os.environ.get("IOT_CACHE_DIR", ""),
        }
        self.stack = Stack(StackConfig.from_env(self.stack_env))
        self.cfg = self.stack.cfg
        self.services: dict[str, Service] = {}
        self.fleets: list[FleetProc] = []
        self.faults: list[Fault] = []
        self.samples: list[dict[str, Any]] = []
        self.rss_start: dict[str, tuple[int | None, int | None]] = {}
        self.watch: KafkaWatch | None = None
        self.stop_sampling = threading.Event()
        self.lock = threading.Lock()
        self.load_started = 0.0
        self.load_ended = 0.0
        self.rss_end: dict[str, tuple[int | None, int | None]] = {}

    # --- set-up ---------------------------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        a = self.args
        return {
            **os.environ,
            **self.stack_env,
            "IOT_LOG_LEVEL": "INFO",
            "IOT_WINDOW_TUMBLING_S": str(a.tumbling),
            "IOT_WINDOW_HOPPING_S": str(a.hopping),
            "IOT_WINDOW_HOP_STEP_S": str(a.hop_step),
            "IOT_WINDOW_GRACE_S": str(a.grace),
        }

    def start_services(self) -> None:
        log(
            "stack_up",
            folder=self.folder,
            mqtt=self.cfg.mqtt_port,
            kafka=self.cfg.kafka_port,
            mongo=self.cfg.mongo_port,
        )
        self.stack.up(list(STACK_SERVICES))
        for i in range(self.args.gateways):
            port = free_ports(1)[0]
            env = {
                **self.common_env(),
                "IOT_GATEWAY_CLIENT_ID": f"soak-gw{i}",
                "IOT_GATEWAY_GROUP": "soak",
                "IOT_GATEWAY_METRICS_PORT": str(port),
                "IOT_GATEWAY_SESSION_EXPIRY_S": "3600",
            }
            url = f"http://{HOST}:{port}/metrics"
            svc = Service(
                f"gateway{i}",
                ["gateway"],
                env,
                self.folder / f"gateway{i}.log",
                lambda _s, url=url: metric(url, "iot_gateway_mqtt_connected") == 1.0,
            )
            self.services[svc.name] = svc
            if not svc.start():
                raise SystemExit(f"gateway{i} did not start; see {svc.log_path}")
        port = free_ports(1)[0]
        env = {
            **self.common_env(),
            "IOT_BACKEND_APP_ID": BACKEND_APP,
            "IOT_BACKEND_METRICS_PORT": str(port),
            "IOT_BACKEND_IDLE_TIMEOUT_S": str(self.args.idle),
            **({"IOT_BACKEND_OPEN_WRITE_S": str(self.args.open_write_s)} if self.args.open_write_s else {}),
            "IOT_BACKEND_DATA_DIR": str(self.folder / "backend"),
        }
        url = f"http://{HOST}:{port}/metrics"
        backend = Service("backend", ["backend"], env, self.folder / "backend.log", lambda _s: _endpoint(url))
        self.services["backend"] = backend
        if not backend.start(180):
            raise SystemExit(f"backend did not start; see {backend.log_path}")
        self.watch = KafkaWatch(self.cfg.kafka_bootstrap)
        self.watch.start()

    def start_fleets(self) -> None:
        a = self.args
        boards = [(f"place{d % a.places:03d}", f"soak{d:05d}") for d in range(a.devices)]
        per = -(-len(boards) // a.fleet_procs)
        cfg = {
            "host": HOST,
            "port": self.cfg.mqtt_port,
            "rate_hz": a.rate,
            "ack_timeout_s": a.ack_timeout,
            "boot": 1,
        }
        for i in range(a.fleet_procs):
            part = boards[i * per : (i + 1) * per]
            if part:
                self.fleets.append(FleetProc(i, part, cfg, self.folder))
        total = len(boards)
        poll_until(lambda: self.fleet_sum("connected") == total, 120, "every board connected")
        self.load_started = time.time()
        log("fleet_running", boards=total, rate_hz=a.rate, processes=len(self.fleets))

    # --- observation ----------------------------------------------------------------------------

    def fleet_sum(self, key: str) -> int:
        return sum(int(f.stats.get(key, 0)) for f in self.fleets)

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {name: svc.pid for name, svc in self.services.items()}
        for name in STACK_SERVICES:
            out[name] = self.stack.pid(name)
        return out

    def sample_forever(self) -> None:
        lagger = LagProbe(self.cfg.kafka_bootstrap)
        while not self.stop_sampling.wait(self.args.sample_s):
            sample: dict[str, Any] = {"t": round(time.time(), 3)}
            sample["rss_kb"] = {name: rss_kb(pid) for name, pid in self.pids().items()}
            sample["lag"] = lagger.lag()
            sample["outbox"] = self.fleet_sum("outbox")
            sample["connected"] = self.fleet_sum("connected")
            sample["published"] = self.fleet_sum("published")
            sample["kafka_distinct"] = self.watch.distinct() if self.watch else 0
            self.samples.append(sample)
            self.supervise()
        lagger.close()

    def supervise(self) -> None:
        """Restart a gateway/backend that exited on its own (systemd's Restart=always)."""
        for svc in self.services.values():
            with self.lock:
                if svc.planned_down or svc.proc is None or svc.proc.poll() is None:
                    continue
                code = svc.proc.returncode
                log("unplanned_exit", service=svc.name, code=code, action="restarting")
                svc.unplanned.append({"t": round(time.time(), 3), "code": code})
                svc.start()

    # --- faults ---------------------------------------------------------------------------------

    def run_faults(self) -> None:
        a = self.args
        names = [f for f in FAULTS if f in a.faults]
        load_s = a.minutes * 60
        spacing = max(a.pause + 5.0, (load_s - a.warmup - a.tail) / max(1, len(names)))
        start = self.load_started + a.warmup
        self.record_rss_start()
        for i, name in enumerate(names):
            at = start + i * spacing
            with contextlib.suppress(ValueError):
                time.sleep(max(0.0, at - time.time()))  # the schedule, not synchronisation
            fault = self.inject(name)
            self.faults.append(fault)
            log(
                "fault_done",
                fault=name,
                target=fault.target,
                down_s=round(fault.back_at - fault.killed_at, 1),
                ok=fault.ok,
            )
        end = max(self.load_started + load_s, (self.faults[-1].back_at + a.tail) if self.faults else 0)
        time.sleep(max(0.0, end - time.time()))  # the schedule: load continues to its end

    def record_rss_start(self) -> None:
        self.rss_start = {name: (pid, rss_kb(pid)) for name, pid in self.pids().items()}

    def inject(self, name: str) -> Fault:
        a = self.args
        if name == "gateway":
            svc = self.services["gateway0"]
            fault = Fault(name, svc.name, killed_at=time.time())
            with self.lock:
                svc.kill9()
            log("fault", kill=svc.name, signal="SIGKILL")
            time.sleep(a.pause)  # the outage itself
            with self.lock:
                fault.ok = svc.start()
        elif name == "backend":
            svc = self.services["backend"]
            fault = Fault(name, svc.name, killed_at=time.time())
            with self.lock:
                svc.kill9()
            log("fault", kill=svc.name, signal="SIGKILL")
            time.sleep(a.pause)
            with self.lock:
                fault.ok = svc.start(180)
        elif name in STACK_SERVICES:
            fault = Fault(name, name, killed_at=time.time())
            pid = self.stack.kill(name)
            log("fault", kill=name, pid=pid, signal="SIGKILL")
            time.sleep(a.pause)
            try:
                self.stack.up([name])
            except Exception as exc:  # report it; the accounting shows the consequence
                log("restart_failed", service=name, error=repr(exc)[:300])
                fault.ok = False
        elif name == "boards":
            fault = Fault(name, "all boards", killed_at=time.time())
            for f in self.fleets:
                f.command(f"outage {a.pause}")
            log("fault", outage="boards", seconds=a.pause)
            total = sum(len(f.boards) for f in self.fleets)
            poll_until(lambda: self.fleet_sum("connected") == 0, 10, "boards offline")
            fault.ok = poll_until(
                lambda: self.fleet_sum("connected") == total, a.pause + 120, "boards back online"
            )
        else:
            raise ValueError(name)
        fault.back_at = time.time()
        return fault

    # --- the end ---------------------------------------------------------------------------------

    def drain(self) -> dict[str, Any]:
        a = self.args
        for f in self.fleets:
            f.command("stop")
        self.load_ended = time.time()
        published = lambda: self.fleet_sum("published")  # noqa: E731
        log("load_stopped", published=published())
        timings: dict[str, Any] = {}
        t0 = time.time()
        # Stats lines are one second old at most: wait until they show the stop, then an empty outbox.
        poll_until(
            lambda: all(f.stats.get("t", 0) > self.load_ended + 1 for f in self.fleets), 30, "fleet stats"
        )
        timings["outboxes_empty"] = poll_until(
            lambda: self.fleet_sum("outbox") == 0, a.ack_timeout * 4 + 180, "every outbox empty"
        )
        timings["outboxes_empty_s"] = round(time.time() - t0, 1)
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            HOST, self.cfg.mongo_port, serverSelectionTimeoutMS=10_000, datetime_conversion="DATETIME_MS"
        )
        db = client[DATABASE]
        total = published()

        def stored_all() -> bool:
            try:
                return bool(db[contract.COLL_READINGS].count_documents({}) >= total)
            except pymongo.errors.PyMongoError:
                return False

        timings["readings_stored"] = poll_until(
            stored_all, a.drain_timeout, "every reading in MongoDB", interval=2.0
        )
        timings["readings_stored_s"] = round(time.time() - t0, 1)

        def all_final() -> bool:
            try:
                return all(
                    db[c].count_documents({"final": {"$ne": True}}) == 0
                    for c in (contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS)
                )
            except pymongo.errors.PyMongoError:
                return False

        timings["windows_final"] = poll_until(all_final, a.idle + a.grace + 300, "every window final", 2.0)
        timings["windows_final_s"] = round(time.time() - t0, 1)
        self.rss_end = {name: (pid, rss_kb(pid)) for name, pid in self.pids().items()}
        finals = [f.finish() for f in self.fleets]
        names = (
            "sent",
            "resent",
            "acks",
            "bad_acks",
            "connects",
            "refused",
            "puback_timeouts",
            "keepalive_timeouts",
            "revived",
            "not_ready_with_outbox",
        )
        counters = {k: self.fleet_sum(k) for k in names}
        self.fleets = []
        log("accounting")
        result = soak_report.account(db, finals, self.watch, self.faults, self.args)
        client.close()
        result["drain"] = timings
        result["boards"] = counters
        return result

    def close(self) -> None:
        """Stop everything this soak started; the stack's services in any case, whatever failed before."""
        try:
            self.stop_sampling.set()
            if self.watch is not None:
                self.watch.stop_event.set()
                self.watch.join(10)
            for f in self.fleets:
                with contextlib.suppress(Exception):
                    f.kill()
            for svc in self.services.values():
                with self.lock, contextlib.suppress(Exception):
                    svc.stop()
        finally:
            self.stack.down(list(STACK_SERVICES))


def _endpoint(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class LagProbe:
    """The backend group's lag on iot.readings; its clients are made again after a failure (Kafka
    SIGKILLed and back)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin: AdminClient | None = None
        self.consumer: Consumer | None = None

    def lag(self) -> int | None:
        from confluent_kafka import ConsumerGroupTopicPartitions

        try:
            if self.admin is None or self.consumer is None:
                self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                self.consumer = Consumer(
                    {"bootstrap.servers": self.bootstrap, "group.id": "soak-lag", "log_level": 0}
                )
            future = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(BACKEND_APP)])
            committed = future[BACKEND_APP].result(timeout=3).topic_partitions
            total = 0
            for tp in committed:
                if tp.topic != contract.TOPIC_READINGS:
                    continue
                part = TopicPartition(tp.topic, tp.partition)
                _low, high = self.consumer.get_watermark_offsets(part, timeout=3)
                total += max(0, high - max(tp.offset, 0))
            return total
        except Exception:  # Kafka away (a fault) or the group not formed yet: no sample, fresh clients
            self.close()
            return None

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
        self.admin = self.consumer = None


@contextlib.contextmanager
def soak_folder(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    folder = Path(tempfile.mkdtemp(prefix="iot-soak-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--rate", type=float, default=1.0, help="readings per second per board")
    p.add_argument(
        "--minutes", type=float, default=10.0, help="load duration (extended until the faults end)"
    )
    p.add_argument("--places", type=int, default=20)
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument(
        "--fleet-procs", type=int, default=0, help="fleet processes (default: one per 1000 boards)"
    )
    p.add_argument("--faults", default="all", help=f"comma list of {','.join(FAULTS)}, 'all' or 'none'")
    p.add_argument("--pause", type=float, default=5.0, help="seconds each killed component stays down")
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--tail", type=float, default=20.0, help="load after the last fault")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="board's ack_timeout_s")
    p.add_argument("--tumbling", type=int, default=60)
    p.add_argument("--hopping", type=int, default=300)
    p.add_argument("--hop-step", type=int, default=60)
    p.add_argument("--grace", type=int, default=10)
    p.add_argument("--idle", type=float, default=10.0, help="IOT_BACKEND_IDLE_TIMEOUT_S")
    p.add_argument(
        "--open-write-s",
        type=float,
        default=0.0,
        help="IOT_BACKEND_OPEN_WRITE_S (default: the backend's own): how often an open window is rewritten",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=600.0, help="seconds to wait for the backend to store all"
    )
    p.add_argument("--sample-s", type=float, default=2.0)
    p.add_argument("--kafka-heap", default="512m")
    p.add_argument("--json", type=Path, default=None, help="write the JSON summary here")
    p.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (logs, data)")
    args = p.parse_args(argv)
    if args.faults == "all":
        args.faults = list(FAULTS)
    elif args.faults == "none":
        args.faults = []
    else:
        args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
        unknown = set(args.faults) - set(FAULTS)
        if unknown:
            p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    if args.fleet_procs <= 0:
        args.fleet_procs = max(1, -(-args.devices // 1000))
    return args


class Terminated(Exception):
    """SIGTERM: stop, but take the private stack and the services down first."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.time()
    with soak_folder(args.keep) as folder:
        soak = Soak(args, folder)
        sampler = threading.Thread(target=soak.sample_forever, daemon=True)
        try:
            soak.start_services()
            sampler.start()
            soak.start_fleets()
            soak.run_faults()
            result = soak.drain()
        except Terminated:
            log("terminated", action="stopping the private stack and services")
            return 2
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            soak.close()
        result.update(
            config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            load_s=round(soak.load_ended - soak.load_started, 1),
            wall_s=round(time.time() - started, 1),
            samples=soak.samples,
            rss={
                name: {
                    "start_kb": soak.rss_start.get(name, (None, None))[1],
                    "end_kb": soak.rss_end.get(name, (None, None))[1],
                    "restarted": soak.rss_start.get(name, (None, None))[0]
                    != soak.rss_end.get(name, (None, None))[0],
                }
                for name in soak.rss_end
            },
            unplanned_exits={n: s.unplanned for n, s in soak.services.items() if s.unplanned},
            machine={"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        )
        soak_report.finish(result)
        text = soak_report.table(result)
        print(text)
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1))
        if args.keep is not None:
            (folder / "summary.json").write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

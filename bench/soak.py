"""Fleet soak with faults: SIGKILL every component under load, then account for every reading.

    .venv/bin/python bench/soak.py [--devices 2000] [--rate 1.0] [--minutes 10] [--places 20]
                                   [--gateways 2] [--faults all] [--json soak.json]

Runs on its OWN PRIVATE STACK (Mosquitto, Kafka, FerretDB started through the stack module in a temp
IOT_STACK_DIR on free ports), never the shared one: it kills services. On it: `--gateways` gateway
processes in one shared group, one backend (`--backends` workers of one app), and fleet processes
(bench/soak_fleet.py) of firmware-like boards: QoS 1, (device, boot, seq) ids, every reading kept
until the gateway's end-to-end ack covers it, re-sent after a reconnect or an ack timeout.

Fault schedule (each once, one after another, each brought back after `--pause` seconds): a hostile
board (bench/soak_hostile.py: bad retained health, poison readings, a burst of `--hostile-burst`
garbage messages on its own topics; its valid readings are accounted apart), SIGKILL of one gateway,
the backend, Kafka, Mosquitto, the MongoDB-wire server (FerretDB), and a network outage seen by every
board. A gateway or backend that exits on its own is restarted (as systemd would) and
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
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import soak_accounting
import soak_drain
import soak_report
from soak_common import (
    BACKEND_APP,
    DATABASE,
    HOST,
    PYTHON,
    log,
    poll_until,
)
from soak_faults import FAULTS, STACK_SERVICES, FaultInjector
from soak_kafka import PLACE_TOPIC, KafkaWatch, LagProbe
from soak_procs import FleetProc, Service
from soak_sampling import Sampler

from iot import contract
from iot.broker import credentials
from iot.devices.provision import DevicesSettings, Provisioner
from iot.env import MqttEndpoint
from iot.harness.children import gateway_connected, rss_kb
from iot.harness.oracle import slot_ms
from iot.harness.ports import free_port, free_ports
from iot.harness.stack import PrivateStack
from iot.kafka import KafkaConnection


class Soak:
    """The private stack, the services and fleets on it, and what the run observed."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        mqtt, kafka, ctrl, mongo, prom, node, fdbg, sasl = free_ports(8)
        self.mqtt_port, self.mongo_port = mqtt, mongo
        self.stack_env = {
            "IOT_MQTT_URL": f"mqtt://{HOST}:{mqtt}",
            "IOT_MQTT_TLS_PORT": "0",  # no TLS listener: its default (MQTT port + 1) was not checked free
            "IOT_KAFKA_BOOTSTRAP": f"{HOST}:{kafka}",
            "IOT_KAFKA_CONTROLLER_PORT": str(ctrl),
            "IOT_MONGO_URI": f"mongodb://{HOST}:{mongo}/{DATABASE}",
            "IOT_PROMETHEUS_PORT": str(prom),
            "IOT_NODE_EXPORTER_PORT": str(node),
            "IOT_FERRETDB_DEBUG_PORT": str(fdbg),
            "IOT_KAFKA_HEAP": args.kafka_heap,
            "IOT_KAFKA_SASL_PORT": str(sasl) if args.kafka_sasl else "0",
        }
        self.stack = PrivateStack(folder / "stack", self.stack_env)
        self.specs = soak_accounting.window_specs(args)
        self.services: dict[str, Service] = {}
        self.fleets: list[FleetProc] = []
        self.lock = threading.Lock()
        self.watch: KafkaWatch | None = None
        self.sampler = Sampler(
            args.sample_s,
            self.kafka,
            self.pids,
            self.fleet_sum,
            self.services,
            self.lock,
            lambda: self.watch,
        )
        self.faults = FaultInjector(args, self.services, self.stack, self.fleets, self.lock, self.fleet_sum)
        self.rss_start: dict[str, tuple[int | None, int | None]] = {}
        self.rss_end: dict[str, tuple[int | None, int | None]] = {}
        self.load_started = self.load_ended = self.warm_at = 0.0

    def kafka(self) -> KafkaConnection:
        """How the services and the soak's own readers reach Kafka: the plain listener, or with
        --kafka-sasl the SASL_SSL one (its user's password exists once the stack is up)."""
        return self.stack.kafka(sasl=self.args.kafka_sasl)

    # --- set-up ---------------------------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        a = self.args
        return {
            **os.environ,
            **self.stack_env,
            **self.kafka().env(),
            # The private stack's folder: its credentials file holds the gateway's account there.
            "IOT_STACK_DIR": str(self.stack.folder),
            "IOT_LOG_LEVEL": "INFO",
            "IOT_WINDOW_TUMBLING_S": str(a.tumbling),
            "IOT_WINDOW_HOPPING_S": str(a.hopping),
            "IOT_WINDOW_HOP_STEP_S": str(a.hop_step),
            "IOT_WINDOW_GRACE_S": str(a.grace),
        }

    def traced(self, name: str, service: str) -> list[str] | None:
        """The command that runs `service` under tracemalloc (--tracemalloc), else None."""
        if not self.args.tracemalloc:
            return None
        out = self.folder / f"{name}.tracemalloc.jsonl"
        return [PYTHON, str(Path(__file__).resolve().parent / "soak_traced.py"), str(out), "30", service]

    def start_services(self) -> None:
        log("stack_up", folder=self.folder, mqtt=self.mqtt_port, kafka=self.stack.kafka_bootstrap)
        self.stack.up(list(STACK_SERVICES))
        for i in range(self.args.gateways):
            port = free_port()
            env = {
                **self.common_env(),
                "IOT_GATEWAY_CLIENT_ID": f"soak-gw{i}",
                "IOT_GATEWAY_GROUP": "soak",
                "IOT_GATEWAY_METRICS_PORT": str(port),
                "IOT_GATEWAY_SESSION_EXPIRY_S": "3600",
            }
            svc = Service(
                f"gateway{i}",
                ["gateway"],
                env,
                self.folder / f"gateway{i}.log",
                port,
                gateway_connected,
                command=self.traced(f"gateway{i}", "gateway"),
            )
            self.services[svc.name] = svc
            if not svc.launch():
                raise SystemExit(f"gateway{i} did not start; see {svc.log_path}")
        a = self.args
        for i in range(a.backends):
            # Workers of one app (one consumer group): the group splits the partitions between them.
            name = "backend" if i == 0 else f"backend{i}"
            port = free_port()
            env = {
                **self.common_env(),
                "IOT_BACKEND_APP_ID": BACKEND_APP,
                "IOT_BACKEND_METRICS_PORT": str(port),
                "IOT_BACKEND_IDLE_TIMEOUT_S": str(a.idle),
                **({"IOT_BACKEND_OPEN_WRITE_S": str(a.open_write_s)} if a.open_write_s else {}),
                "IOT_BACKEND_DATA_DIR": str(self.folder / name),
            }
            backend = Service(
                name,
                ["backend"],
                env,
                self.folder / f"{name}.log",
                port,
                Service.answers,
                command=self.traced(name, "backend"),
            )
            self.services[name] = backend
            if not backend.launch(180):
                raise SystemExit(f"{name} did not start; see {backend.log_path}")
        self.watch = KafkaWatch(self.kafka(), slot_ms(self.specs))
        self.watch.start()

    def start_fleets(self) -> None:
        a = self.args
        boards = [(f"place{d % a.places:03d}", f"soak{d:05d}") for d in range(a.devices)]
        per = -(-len(boards) // a.fleet_procs)
        cfg = {
            "host": HOST,
            "port": self.mqtt_port,
            "rate_hz": a.rate,
            "ack_timeout_s": a.ack_timeout,
            "ack_timeout_max_s": a.ack_timeout_max,
            "boot": 1,
        }
        cfg["passwords"] = self.provision(boards)
        for i in range(a.fleet_procs):
            part = boards[i * per : (i + 1) * per]
            if part:
                self.fleets.append(FleetProc(i, part, cfg, self.folder))
        total = len(boards)
        poll_until(lambda: self.fleet_sum("connected") == total, 120, "every board connected")
        self.load_started = time.time()
        log("fleet_running", boards=total, rate_hz=a.rate, processes=len(self.fleets))

    def provision(self, boards: list[tuple[str, str]]) -> dict[str, str]:
        """Every board's own account on the stack's broker, as `iot devices add` makes it (the
        operator's login from the stack's credentials file); device -> password."""
        operator = credentials.read_stack_file(self.stack.folder / credentials.FILE_NAME)[
            credentials.OPERATOR
        ]
        settings = DevicesSettings(
            MqttEndpoint(HOST, self.mqtt_port, False), None, operator, self.stack_env["IOT_MONGO_URI"]
        )
        started = time.monotonic()
        with Provisioner.open(settings) as prov:
            passwords = prov.ensure_all([(place, device, None) for place, device in boards])
        log("fleet_provisioned", boards=len(boards), seconds=f"{time.monotonic() - started:.1f}")
        return passwords

    # --- observation ----------------------------------------------------------------------------

    def fleet_sum(self, key: str) -> int:
        return sum(int(f.stats.get(key, 0)) for f in self.fleets)

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {name: svc.pid for name, svc in self.services.items()}
        for name in STACK_SERVICES:
            out[name] = self.stack.pid(name)
        for f in self.fleets:
            out[f"fleet{f.index}"] = f.pid
        return out

    def warm(self) -> None:
        self.warm_at = time.time()
        self.rss_start = {name: (pid, rss_kb(pid)) for name, pid in self.pids().items()}

    # --- the run and its end --------------------------------------------------------------------

    def run(self) -> None:
        self.faults.run(self.load_started, self.warm)

    def drain(self) -> dict[str, Any]:
        for f in self.fleets:
            f.command("stop")
        self.load_ended = time.time()
        log("load_stopped", published=self.fleet_sum("published"))
        # Stats lines are one second old at most: wait until they show the stop.
        poll_until(
            lambda: all(f.stats.get("t", 0) > self.load_ended + 1 for f in self.fleets), 30, "fleet stats"
        )
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            HOST, self.mongo_port, serverSelectionTimeoutMS=10_000, datetime_conversion="DATETIME_MS"
        )
        db = client[DATABASE]
        lag = LagProbe(self.kafka(), (contract.TOPIC_READINGS, PLACE_TOPIC))
        timings = soak_drain.wait_for_the_end(
            self.args,
            db,
            lambda: self.fleet_sum("published"),
            lambda: self.fleet_sum("outbox"),
            self.watch,
            self.specs,
            lag.lag,
        )
        lag.close()
        self.rss_end = {name: (pid, rss_kb(pid)) for name, pid in self.pids().items()}
        names = (
            "sent", "resent", "acks", "bad_acks", "connects", "refused", "puback_timeouts", "ack_timeouts",
            "keepalive_timeouts", "revived", "not_ready_with_outbox",
        )  # fmt: skip
        counters = {k: self.fleet_sum(k) for k in names}
        finals = [f.finish() for f in self.fleets]
        self.fleets.clear()
        log("accounting")
        hostile = self.faults.hostile
        result = soak_accounting.account(
            db, finals, self.watch, self.faults.faults, self.args, hostile.valid if hostile else None
        )
        client.close()
        result["drain"] = timings
        result["boards"] = counters
        return result

    def close(self) -> None:
        """Stop everything this soak started; the stack's services in any case, whatever failed before."""
        try:
            self.sampler.stop_event.set()
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

    def summary(self, result: dict[str, Any], started: float) -> None:
        result.update(
            config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            load_started=self.load_started,
            load_ended=self.load_ended,
            warm_at=self.warm_at,
            load_s=round(self.load_ended - self.load_started, 1),
            wall_s=round(time.time() - started, 1),
            samples=self.sampler.samples,
            rss={
                name: {
                    "start_kb": self.rss_start.get(name, (None, None))[1],
                    "end_kb": self.rss_end.get(name, (None, None))[1],
                    "restarted": self.rss_start.get(name, (None, None))[0]
                    != self.rss_end.get(name, (None, None))[0],
                }
                for name in self.rss_end
            },
            unplanned_exits={n: s.unplanned for n, s in self.services.items() if s.unplanned},
            machine={"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        )


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
        "--backends", type=int, default=1, help="backend workers of one app (the backend fault kills one)"
    )
    p.add_argument(
        "--fleet-procs", type=int, default=0, help="fleet processes (default: one per 1000 boards)"
    )
    p.add_argument("--faults", default="all", help=f"comma list of {','.join(FAULTS)}, 'all' or 'none'")
    p.add_argument("--pause", type=float, default=5.0, help="seconds each killed component stays down")
    p.add_argument(
        "--hostile-burst", type=int, default=2000, help="garbage messages in the hostile board's burst"
    )
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--tail", type=float, default=20.0, help="load after the last fault")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="board's ack_timeout_s")
    p.add_argument("--ack-timeout-max", type=float, default=300.0, help="board's ack_timeout_max_s")
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
    p.add_argument(
        "--kafka-sasl",
        action="store_true",
        help="every Kafka client (gateways, backend, the soak's readers) on the stack's SASL_SSL listener",
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the gateways and the backend under tracemalloc (bench/soak_traced.py; slower): "
        "NAME.tracemalloc.jsonl in the soak folder (use --keep)",
    )
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
        try:
            soak.start_services()
            soak.sampler.start()
            soak.start_fleets()
            soak.run()
            result = soak.drain()
        except Terminated:
            log("terminated", action="stopping the private stack and services")
            return 2
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            soak.close()
        soak.summary(result, started)
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

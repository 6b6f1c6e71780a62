"""The backend beside its peers on the same exact job: one prefilled topic, interleaved runs, ratios.

One topic (6 partitions, like iot.readings) is prefilled once with N readings in the gateway's record
format (100 devices, 10 places: bench/backend_throughput.py's `prefill`). Then, round after round, in
an order that rotates each round, every system reads it from the start with a consumer group of its
own and does the backend's windows (tumbling 60 s + hopping 300 s every 60 s, per sensor and per
place, count/mean/min/max of the four metrics, event time from `ts`):

  backend             one `iot backend` worker (bench/backend_throughput.py's `backend_run`): exact,
                      de-duplicated, readings and windows into MongoDB (FerretDB), windows and the
                      place repartition through Kafka, state changelogs
  kafka-streams       bench/peers/kstreams (Kafka Streams, the stack's Kafka version), one stream
                      thread, grace IOT_WINDOW_GRACE_S; window updates to a Kafka topic
  kafka-streams-exact the same with grace = IOT_WINDOW_ALLOWED_LATENESS_S: no update dropped as late
  quix, quix-exact    bench/peers/quix_job.py (Quix Streams, in a virtualenv of its own), the same two
                      graces; final windows to a Kafka topic
  plain               bench/backend_throughput.py's `baseline`: a confluent-kafka loop running the
                      backend's own window code in memory, no outputs
  backend-baseline    with `--baseline-tree PATH`: the same worker run from another source tree (e.g.
                      `git worktree add --detach /tmp/before main`), so a lever is measured before
                      and after in one run; its ratio to the backend and to kafka-streams-exact is
                      printed too

For each run: readings/s (from the first reading processed until every reading went through the place
stage; for the JVM also "warm", after its first 5 s), CPU per reading of the process, of FerretDB and
of Kafka (/proc, over the measured span), the window updates each dropped as late (sensor/place; the
backend drops none: what its peers drop it amends), and the load average. Ratios are taken within a
round (the box is shared: absolute rates move with the load, ratios of neighbouring runs much less);
the medians are printed, and the last line is the goal of issue #24:

    ratio backend/kafka-streams-exact: X      (against Kafka Streams' warm rate)

Setup (needs the package registries, so outside a private network namespace), once:

    .venv/bin/python bench/peers.py setup     # Maven build of the Kafka Streams job, Quix's virtualenv

Run (the native stack up: `iot stack up`):

    .venv/bin/python bench/peers.py [--readings 250000] [--rounds 2] [--systems backend,kafka-streams-exact]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backend_throughput as bt
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from iot import contract
from iot.harness.children import Child
from iot.topics import TopicAdmin, TopicSpec

REPO = Path(__file__).resolve().parents[1]

CACHE = Path(os.environ.get("IOT_BENCH_CACHE", Path.home() / ".cache/iot/bench-peers"))
KSTREAMS_SRC = REPO / "bench/peers/kstreams"
KSTREAMS_BUILD = CACHE / "kstreams"
QUIX_VENV = CACHE / "quix-venv"
QUIX_JOB = REPO / "bench/peers/quix_job.py"
# The Quix Streams release these figures are for (the peer the issue measured).
QUIX_VERSION = "3.28.1"
WARMUP_S = 5.0
SYSTEMS = (
    "backend",
    "backend-baseline",
    "kafka-streams",
    "kafka-streams-exact",
    "quix",
    "quix-exact",
    "plain",
)
GRACE_S = int(os.environ.get("IOT_WINDOW_GRACE_S", contract.ENV_DEFAULTS["IOT_WINDOW_GRACE_S"]))
EXACT_GRACE_S = int(
    os.environ.get("IOT_WINDOW_ALLOWED_LATENESS_S", contract.ENV_DEFAULTS["IOT_WINDOW_ALLOWED_LATENESS_S"])
)
WINDOW_UPDATES_PER_READING = 6  # one tumbling + five hopping windows per reading, per scope


def setup() -> int:
    """Build the Kafka Streams job and create Quix Streams' virtualenv (both under CACHE)."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise SystemExit("setup: the Kafka Streams peer needs Java 17 and Maven (apt-get install maven)")
    print(f"building {KSTREAMS_SRC} into {KSTREAMS_BUILD} (Maven Central)")
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(KSTREAMS_SRC / "pom.xml"), f"-Dbuild.dir={KSTREAMS_BUILD}", "compile"],
        check=True,
    )
    if not (QUIX_VENV / "bin/python").exists():
        print(f"creating {QUIX_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    print(f"installing quixstreams=={QUIX_VERSION} into {QUIX_VENV} (PyPI)")
    subprocess.run(
        [str(QUIX_VENV / "bin/pip"), "install", "-q", f"quixstreams=={QUIX_VERSION}"],
        check=True,
    )
    print("setup done")
    return 0


def _ready() -> None:
    missing = []
    if not (KSTREAMS_BUILD / "classpath.txt").exists():
        missing.append(f"the Kafka Streams job ({KSTREAMS_BUILD})")
    if not (QUIX_VENV / "bin/python").exists():
        missing.append(f"Quix Streams' virtualenv ({QUIX_VENV})")
    if missing:
        raise SystemExit(
            f"missing {' and '.join(missing)}: run `.venv/bin/python bench/peers.py setup` once "
            "(outside a private network namespace: it needs Maven Central and PyPI)"
        )


@dataclass
class Run:
    system: str
    round: int
    rate: float  # readings/s, first reading to the last through the place stage
    cpu_us: float  # the system's own process(es) per reading
    store_cpu_us: float = 0.0
    kafka_cpu_us: float = 0.0
    warm_rate: float | None = None  # after WARMUP_S (JVM)
    warm_cpu_us: float | None = None
    dropped: tuple[float, float] = (0.0, 0.0)  # window updates dropped as late: sensor, place
    load: float = field(default_factory=lambda: os.getloadavg()[0])
    note: str = ""

    @property
    def best_rate(self) -> float:
        return self.warm_rate if self.warm_rate is not None else self.rate


class Progress:
    """The latest `progress` line of a peer's stdout, read by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.latest: tuple[int, int, int, int, int, str] | None = None
        self.error = ""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts[:1] == ["progress"] and len(parts) == 7:
                t, s, p, ds, dp = (int(x) for x in parts[1:6])
                self.latest = (t, s, p, ds, dp, parts[6])
            elif parts[:1] == ["error"]:
                self.error = line.strip()


def _pids(port: int) -> list[int]:
    return bt.listener_pids(port)


def _cpu(pids: list[int]) -> float:
    return sum(bt.cpu_seconds(p) for p in pids)


def peer_run(system: str, rnd: int, cmd: list[str], n: int, log: Path) -> Run:
    """Run a peer until every reading went through its place stage; measure it as backend_run does."""
    store = _pids(int(bt.MONGO.rsplit(":", 1)[1].split("/")[0]))
    kafka = _pids(int(bt.KAFKA.split(",")[0].rsplit(":", 1)[1]))
    log.unlink(missing_ok=True)
    peer = Child(system, cmd, log, cwd=REPO, interactive=True).start()
    assert peer.proc is not None
    proc = peer.proc
    progress = Progress(proc)

    def check(deadline: float, what: str) -> tuple[int, int, int, int, int, str]:
        if proc.poll() is not None or progress.error or time.monotonic() > deadline:
            raise SystemExit(f"{system} {what}: {progress.error or 'see ' + str(log)}")
        return progress.latest or (0, 0, 0, 0, 0, "")

    try:
        deadline = time.monotonic() + 180
        while check(deadline, "did not start processing")[1] == 0:
            time.sleep(0.05)
        t0 = time.perf_counter()
        first = check(deadline, "")[1]
        cpu0 = (_cpu([proc.pid]), _cpu(store), _cpu(kafka))
        warm: tuple[float, int, float] | None = None
        deadline = time.monotonic() + 1800
        while True:
            _, s, p, ds, dp, _ = check(deadline, "stopped")
            now = time.perf_counter()
            if warm is None and now - t0 >= WARMUP_S:
                warm = (now, s, _cpu([proc.pid]))
            if s >= n and p >= n:
                break
            time.sleep(0.25)
        cpu = (_cpu([proc.pid]) - cpu0[0], _cpu(store) - cpu0[1], _cpu(kafka) - cpu0[2])
        done = (n - first) or 1
        run = Run(
            system,
            rnd,
            done / (now - t0),
            1e6 * cpu[0] / done,
            1e6 * cpu[1] / done,
            1e6 * cpu[2] / done,
            dropped=(float(ds), float(dp)),
        )
        if warm is not None and warm[1] < n and now > warm[0]:
            run.warm_rate = (n - warm[1]) / (now - warm[0])
            run.warm_cpu_us = 1e6 * (_cpu([proc.pid]) - warm[2]) / (n - warm[1])
        return run
    finally:
        peer.stop(30)


def kstreams_cmd(app_id: str, topic: str, output: str, grace_s: int, state: str) -> list[str]:
    classpath = f"{KSTREAMS_BUILD / 'classes'}:{(KSTREAMS_BUILD / 'classpath.txt').read_text().strip()}"
    return [
        "java",
        "-cp",
        classpath,
        "iot.bench.peers.WindowsJob",
        *_job_args(app_id, topic, output, grace_s, state),
    ]


def quix_cmd(app_id: str, topic: str, output: str, grace_s: int, state: str) -> list[str]:
    return [str(QUIX_VENV / "bin/python"), str(QUIX_JOB), *_job_args(app_id, topic, output, grace_s, state)]


def _job_args(app_id: str, topic: str, output: str, grace_s: int, state: str) -> list[str]:
    return [
        "--bootstrap",
        bt.KAFKA,
        "--source",
        topic,
        "--output",
        output,
        "--app-id",
        app_id,
        "--state-dir",
        state,
        "--grace-ms",
        str(grace_s * 1000),
        # The backend's commit interval (IOT_BACKEND_COMMIT_INTERVAL_S default): 1 s.
        "--commit-ms",
        "1000",
        "--partitions",
        str(bt.PARTITIONS),
    ]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:8]
        self.topic = f"peers-{self.tag}-src"
        self.admin = AdminClient(bt.KAFKA_CONN.librdkafka())
        self.databases: list[str] = []
        self.state = Path(tempfile.mkdtemp(prefix=f"peers-{self.tag}-"))
        self.n = (args.readings // args.devices) * args.devices
        self.baseline = str(args.baseline_tree.resolve()) if args.baseline_tree else ""

    def create_topic(self, name: str) -> None:
        TopicAdmin(bt.KAFKA_CONN).ensure([TopicSpec(name, bt.PARTITIONS)])

    def one(self, system: str, rnd: int) -> Run:
        name = f"peers-{self.tag}-{system}-r{rnd}"
        if system == "plain":
            stats: dict[str, float] = {}
            rate = bt.baseline(self.topic, self.n, stats)
            return Run(system, rnd, rate, stats["cpu_us"], note="in memory, no outputs")
        if system in ("backend", "backend-baseline"):
            db = name.replace("-", "_")
            self.databases.append(db)
            stats = {}
            # The baseline's packages first on the path (the venv's own are an editable install's
            # finder, which Python asks after the path).
            extra = {"PYTHONPATH": self.baseline} if system == "backend-baseline" else None
            _, rate = bt.backend_run(self.topic, name, db, self.n, stats=stats, extra=extra)
            return Run(
                system,
                rnd,
                rate,
                stats["cpu_us"],
                stats["store_cpu_us"],
                stats["kafka_cpu_us"],
                dropped=(stats["late_sensor"], stats["late_place"]),
                note="amended readings (sensor/place) "
                f"{stats['amended_readings_sensor']:.0f}/{stats['amended_readings_place']:.0f}",
            )
        output = f"{name}-out"
        self.create_topic(output)
        grace = EXACT_GRACE_S if system.endswith("-exact") else GRACE_S
        make: Callable[..., list[str]] = kstreams_cmd if system.startswith("kafka-streams") else quix_cmd
        state = self.state / name
        log = self.state / f"{name}.log"
        return peer_run(system, rnd, make(name, self.topic, output, grace, str(state)), self.n, log)

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            mine = [t for t in self.admin.list_topics(timeout=10).topics if self.tag in t]
            for fut in self.admin.delete_topics(mine, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    fut.result(timeout=30)
        with contextlib.suppress(Exception):
            client: MongoClient[dict[str, Any]] = MongoClient(bt.MONGO)
            for db in self.databases:
                client.drop_database(db)
            client.close()
        shutil.rmtree(self.state, ignore_errors=True)


def describe(run: Run) -> str:
    warm = f" (warm {run.warm_rate:,.0f}/s, {run.warm_cpu_us:.0f} us)" if run.warm_rate else ""
    return (
        f"round {run.round} {run.system}: {run.rate:,.0f} readings/s{warm}; CPU per reading: process "
        f"{run.cpu_us:.0f} us, FerretDB {run.store_cpu_us:.0f} us, Kafka {run.kafka_cpu_us:.0f} us; "
        f"dropped late (window updates, sensor/place) {run.dropped[0]:.0f}/{run.dropped[1]:.0f}; "
        f"load {run.load:.1f}{'; ' + run.note if run.note else ''}"
    )


def table(runs: list[Run], n: int) -> list[str]:
    updates = n * WINDOW_UPDATES_PER_READING
    lines = [
        f"| system ({n:,} readings) | readings/s (median) | warm | CPU us/reading: process / FerretDB / Kafka"
        " | dropped as late, sensor / place (of the window updates) | load | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for system in SYSTEMS:
        mine = [r for r in runs if r.system == system]
        if not mine:
            continue
        med = statistics.median
        warm = [r.warm_rate for r in mine if r.warm_rate is not None]
        ds, dp = med(r.dropped[0] for r in mine), med(r.dropped[1] for r in mine)
        lines.append(
            f"| {system} | {med(r.rate for r in mine):,.0f} | "
            + (f"{med(warm):,.0f}" if warm else "")
            + f" | {med(r.cpu_us for r in mine):.0f} / {med(r.store_cpu_us for r in mine):.0f} / "
            f"{med(r.kafka_cpu_us for r in mine):.0f} | {ds:,.0f} ({100 * ds / updates:.0f} %) / "
            f"{dp:,.0f} ({100 * dp / updates:.0f} %) | "
            f"{min(r.load for r in mine):.1f}-{max(r.load for r in mine):.1f} | {len(mine)} |"
        )
    return lines


def ratios(runs: list[Run], system: str = "backend") -> dict[str, float]:
    """Median over the rounds of `system` / peer, both from the same round."""
    out: dict[str, float] = {}
    for peer in SYSTEMS:
        if peer == system:
            continue
        per_round = []
        for rnd in {r.round for r in runs}:
            b = [r for r in runs if r.round == rnd and r.system == system]
            p = [r for r in runs if r.round == rnd and r.system == peer]
            if b and p:
                per_round.append(b[0].rate / p[0].best_rate)
        if per_round:
            out[peer] = statistics.median(per_round)
    return out


def main() -> int:
    if sys.argv[1:2] == ["setup"]:
        return setup()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=250_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--places", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--baseline-tree",
        type=Path,
        help="another source tree of this repository: adds the system backend-baseline (module doc)",
    )
    ap.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, of: {', '.join(SYSTEMS)} (backend is always run: the ratios need it)",
    )
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"--systems: unknown {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}")
    if "backend" not in systems:
        systems.insert(0, "backend")
    if args.baseline_tree and "backend-baseline" not in systems:
        systems.insert(1, "backend-baseline")
    if "backend-baseline" in systems and not (
        args.baseline_tree and (args.baseline_tree / "backend").is_dir()
    ):
        raise SystemExit(
            "--systems backend-baseline needs --baseline-tree PATH, a source tree of this repository"
        )
    if any(s not in ("backend", "backend-baseline", "plain") for s in systems):
        _ready()
    bench = Bench(args)
    runs: list[Run] = []
    try:
        bench.create_topic(bench.topic)
        t = time.perf_counter()
        bt.prefill(bench.topic, bench.n, args.devices, args.places)
        print(
            f"prefilled {bench.n:,} readings ({args.devices} devices, {args.places} places) in "
            f"{time.perf_counter() - t:.1f}s; grace {GRACE_S} s, exact variants {EXACT_GRACE_S} s",
            flush=True,
        )
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(systems)
            for system in systems[k:] + systems[:k]:  # rotate: no system always first or last
                run = bench.one(system, rnd)
                runs.append(run)
                print(describe(run), flush=True)
    finally:
        bench.cleanup()
    print()
    print("\n".join(table(runs, bench.n)))
    print()
    found = ratios(runs)
    for peer, value in found.items():
        if peer != "kafka-streams-exact":
            print(f"ratio backend/{peer}: {value:.2f}")
    if "backend-baseline" in systems and "kafka-streams-exact" in systems:
        before = ratios(runs, "backend-baseline").get("kafka-streams-exact")
        if before is not None:
            print(f"ratio backend-baseline/kafka-streams-exact: {before:.2f}")
    if "kafka-streams-exact" in found:
        print(f"ratio backend/kafka-streams-exact: {found['kafka-streams-exact']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

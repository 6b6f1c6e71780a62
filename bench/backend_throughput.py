"""Backend throughput: one `iot backend` worker vs a plain confluent-kafka loop, same input, same run.

Pre-fills a private topic (6 partitions, like iot.readings; the gateway's record format) with N
readings, then measures:
  1. baseline: a plain confluent-kafka consumer loop doing the same decoding and window aggregation
     (per sensor and per place, backend.windows) in memory, no outputs;
  2. backend: one `iot backend` worker from the same topic (own app id, own Mongo database), from its
     first processed reading until every reading went through both the sensor and the place stage
     (MongoDB writes, repartition through Kafka, changelogs included).
Prints readings/s of both and their ratio. Cleans up its topics and database.

    .venv/bin/python bench/backend_throughput.py [--readings 50000] [--devices 100] [--places 10]
        [--profile out.txt]   # py-spy (pip install py-spy) samples the worker while it is measured

With --profile, py-spy records the worker (every thread, idle ones included, so time waiting on MongoDB
shows) from its first processed reading to the last, and a summary by activity is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from backend.records import decode_reading
from backend.windows import NEW, KeyState, specs_from_seconds
from iot import contract
from iot.harness.children import Child, cpu_s
from iot.harness.payloads import reading
from iot.harness.ports import free_ports
from iot.kafka import KafkaConnection
from iot.topics import TopicAdmin, TopicSpec

REPO = Path(__file__).resolve().parents[1]

# The product's one Kafka connection config (IOT_KAFKA_*, security included): the prefill, the plain
# loop and the workers all reach Kafka the way the backend does.
KAFKA_CONN = KafkaConnection.from_env()
KAFKA = KAFKA_CONN.bootstrap
MONGO = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"]).rsplit("/", 1)[0]
PARTITIONS = 6
BASE_TS = 1_750_000_000_000


def prefill(topic: str, n: int, devices: int, places: int) -> None:
    producer = Producer({**KAFKA_CONN.librdkafka(), "linger.ms": 20, "enable.idempotence": True})
    per_device = n // devices
    for seq in range(per_device):
        for d in range(devices):
            device = f"bench-d{d}"
            payload = reading(
                f"bench-p{d % places}",
                device,
                seq,
                BASE_TS + seq * 1000 + d,
                temperature=20 + (seq % 50) / 10,
                humidity=40 + (d % 30),
                pressure=1000.5,
                luminosity=100.0 + seq % 7,
                fw="bench",
                received_at=BASE_TS + seq * 1000 + d + 5,
            )
            while True:
                try:
                    producer.produce(topic, contract.encode(payload), device.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
    if producer.flush(60):
        raise SystemExit("prefill: Kafka did not take every reading")


def baseline(topic: str, n: int, stats: dict[str, float] | None = None) -> float:
    """Readings/s of a plain consumer loop doing the backend's decoding and aggregation in memory;
    `stats` (when given) gets its CPU per reading (`cpu_us`)."""
    specs = specs_from_seconds(60, 300, 60)
    grace = 10_000
    sensors: dict[str, KeyState] = {}
    places: dict[str, KeyState] = {}
    consumer = Consumer(
        {
            **KAFKA_CONN.librdkafka(),
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    start = None
    cpu_start = time.process_time()
    while seen < n:
        batch = consumer.consume(2000, timeout=1.0)
        if start is None and batch:
            start = time.perf_counter()
            cpu_start = time.process_time()
        for msg in batch:
            if msg.error():
                continue
            r = decode_reading(msg.value())
            seen += 1
            # The worker de-duplicates in the sensor scope only (the place scope counts what the sensor
            # scope forwards once): so does this loop.
            sensor = sensors.get(r["device"])
            if sensor is None:
                sensor = sensors[r["device"]] = KeyState()
            if sensor.mark_seen(r["boot"], r["seq"]) != NEW:
                continue
            for table, key in ((sensors, r["device"]), (places, r["place"])):
                st = table.get(key)
                if st is None:
                    st = table[key] = KeyState()
                st.add(r, specs, grace)
                st.close_ready(grace)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    cpu = time.process_time() - cpu_start
    consumer.close()
    print(f"plain loop: CPU per reading {1e6 * cpu / n:.0f} us (this process, librdkafka's threads included)")
    if stats is not None:
        stats["cpu_us"] = 1e6 * cpu / n
    return n / elapsed


def metric(worker: Child, name: str) -> float:
    """One sample of the worker's /metrics, 0 when absent. Only that metric is scraped: a full scrape
    renders ~1,000 series (the mean gauges) under the worker's GIL, ~20-30 us per reading of its CPU
    at 4 a second."""
    return worker.metrics(name).get(name, 0.0)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (all its threads); 0 when it is gone."""
    return cpu_s(pid) or 0.0


def sched_seconds(pid: int | None) -> dict[int, tuple[float, float]]:
    """Per thread of a process: (seconds running, seconds runnable but waiting for a CPU) so far, from
    /proc/PID/task/TID/schedstat. The second is what a shared box takes from a process: time it could
    have run and did not, which neither its CPU nor its idle share shows."""
    out: dict[int, tuple[float, float]] = {}
    if pid is None:
        return out
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                run, wait, _ = (task / "schedstat").read_text().split()
                out[int(task.name)] = (int(run) / 1e9, int(wait) / 1e9)
    return out


def sched_share(before: dict[int, tuple[float, float]], pid: int | None, span_s: float) -> str:
    """The process's threads over `span_s` since `before`: cores running, and the main thread's shares
    of the span running, waiting for a CPU and neither (blocked: I/O, locks, the GIL, no input)."""
    after = sched_seconds(pid)
    both = [t for t in after if t in before]
    if not both or span_s <= 0:
        return "no scheduler statistics"
    run = sum(after[t][0] - before[t][0] for t in both) / span_s
    queued = sum(after[t][1] - before[t][1] for t in both) / span_s
    main_run = (after[pid][0] - before[pid][0]) / span_s if pid in both else 0.0
    main_queued = (after[pid][1] - before[pid][1]) / span_s if pid in both else 0.0
    return (
        f"threads running {run:.2f} cores, runnable but waiting for a CPU {queued:.2f}; main thread"
        f" running {100 * main_run:.0f} %, waiting for a CPU {100 * main_queued:.0f} %, blocked"
        f" {100 * max(0.0, 1 - main_run - main_queued):.0f} % of the span"
    )


def listener_pids(port: int) -> list[int]:
    """Processes holding a listening TCP socket on `port` (the store's server, to charge its CPU to
    the run; not the private FerretDBs other tests on the box run)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    found.append(int(entry.name))
    return found


def start_profiler(pid: int, out: Path, rate: int = 50, idle: bool = True) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            *(["--idle"] if idle else []),
            "--threads",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def group_members_with(admin: AdminClient, group: str, topic: str) -> int:
    """Members of a consumer group that own partitions of `topic`."""
    try:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:
        return 0
    return sum(1 for m in desc.members if any(tp.topic == topic for tp in m.assignment.topic_partitions))


def backend_run(
    topic: str,
    app_id: str,
    db: str,
    n: int,
    profile: Path | None = None,
    extra: dict[str, str] | None = None,
    mongo: str = MONGO,
    workers: int = 1,
    fill: Callable[[], None] | None = None,
    profile_rate: int = 50,
    profile_idle: bool = True,
    stats: dict[str, float] | None = None,
) -> tuple[float, float]:
    """(sensor-stage readings/s, full-pipeline readings/s) of `workers` workers of one app.

    With `fill`, the workers start on an empty topic and `fill` produces the readings once every
    worker owns partitions: no rebalance (and no reprocessing) inside the measured span. `stats` (when
    given) gets the CPU per reading over the measured span of the workers, the store and Kafka
    (`cpu_us`, `store_cpu_us`, `kafka_cpu_us`) and the workers' counters (`late_sensor`, ...)."""
    ports = free_ports(workers)
    data_dir = tempfile.mkdtemp(prefix="bench-backend-")
    procs: list[Child] = []
    for i, port in enumerate(ports):
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
        env.update(
            **KAFKA_CONN.env(),
            IOT_MONGO_URI=f"{mongo}/{db}",
            IOT_BACKEND_APP_ID=app_id,
            IOT_BACKEND_SOURCE_TOPIC=topic,
            IOT_BACKEND_METRICS_PORT=str(port),
            IOT_BACKEND_DATA_DIR=f"{data_dir}/{i}",
            IOT_LOG_LEVEL="WARNING",
        )
        env.update(extra or {})
        log = Path(tempfile.gettempdir()) / f"{app_id}-{i}.log"
        procs.append(Child.iot(f"backend{i}", ["backend"], log, env=env, cwd=REPO, metrics_port=port).start())

    def total(name: str) -> float:
        return sum(metric(p, name) for p in procs)

    def check(deadline: float, what: str) -> None:
        if not all(p.alive() for p in procs) or time.monotonic() > deadline:
            raise SystemExit(f"backend {what}; see {procs[0].log_path}")

    sensor = 'iot_backend_readings_total{scope="sensor"}'
    place = 'iot_backend_readings_total{scope="place"}'
    spy: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 120
        if fill is not None:
            admin = AdminClient(KAFKA_CONN.librdkafka())
            while group_members_with(admin, app_id, topic) < workers:
                check(deadline, "workers did not all join")
                time.sleep(0.2)
            fill()
        while total(sensor) == 0:
            check(deadline, "did not start processing")
            time.sleep(0.05)
        if profile is not None:
            assert procs[0].pid is not None
            spy = start_profiler(procs[0].pid, profile, profile_rate, profile_idle)
        t0 = time.perf_counter()
        first = total(sensor)
        # CPU per reading is steadier than readings/s on a shared box: other work delays a process
        # (wall time) far more than it changes what the process spends.
        stores = listener_pids(int(mongo.rsplit(":", 1)[1].split("/")[0]))
        brokers = listener_pids(int(KAFKA.split(",")[0].rsplit(":", 1)[1]))
        cpu0 = (
            [cpu_seconds(p.pid) for p in procs],
            [cpu_seconds(pid) for pid in stores],
            [cpu_seconds(pid) for pid in brokers],
        )
        sched0 = sched_seconds(procs[0].pid)
        t_sensor = None
        deadline = time.monotonic() + 900
        while True:
            # One scrape per worker and poll, 4 polls a second, of two families only: the 20 full scrapes
            # a second this loop made before took ~20% of the worker's wall time in its metrics thread
            # (py-spy), a load no Prometheus puts on it (15 s interval).
            s = p = 0.0
            for proc in procs:
                got = proc.metrics(sensor, place)
                s, p = s + got.get(sensor, 0.0), p + got.get(place, 0.0)
            now = time.perf_counter()
            if t_sensor is None and s >= n:
                t_sensor = now
            if p >= n:
                break
            check(deadline, f"stopped at sensor={s} place={p}")
            time.sleep(0.25)
        assert t_sensor is not None
        if spy is not None:
            stop_profiler(spy)
            spy = None
        done = (n - first) or 1
        worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - sum(cpu0[0])
        store_cpu = sum(cpu_seconds(pid) for pid in stores) - sum(cpu0[1])
        kafka_cpu = sum(cpu_seconds(pid) for pid in brokers) - sum(cpu0[2])
        print(
            f"backend: CPU per reading: worker {1e6 * worker_cpu / done:.0f} us, "
            f"FerretDB {1e6 * store_cpu / done:.0f} us (load {os.getloadavg()[0]:.1f})"
        )
        per = {
            c: total(f'iot_backend_mongo_write_seconds_sum{{collection="{c}"}}')
            for c in (contract.COLL_READINGS, contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS)
        }
        detail = ", ".join(f"{c} {v:.1f}s" for c, v in per.items())
        print(f"backend: {now - t0:.1f}s wall; MongoDB bulk writes (both stages): {detail}")
        print(f"backend: scheduler (first worker): {sched_share(sched0, procs[0].pid, now - t0)}")
        # Readings arriving behind a place's watermark (partitions consumed unevenly in a backlog)
        # amend final place windows: a read and a rewrite of the window, work the plain loop skips.
        counts = {
            name: {s: total(f'iot_backend_{name}_total{{scope="{s}"}}') for s in ("sensor", "place")}
            for name in ("amended_readings", "late", "duplicates")
        }
        print(
            "backend: "
            + "; ".join(f"{k} {v['sensor']:.0f}/{v['place']:.0f} (sensor/place)" for k, v in counts.items())
        )
        if stats is not None:
            stats.update(
                cpu_us=1e6 * worker_cpu / done,
                store_cpu_us=1e6 * store_cpu / done,
                kafka_cpu_us=1e6 * kafka_cpu / done,
                wall_s=now - t0,
            )
            for name, by_scope in counts.items():
                for scope, value in by_scope.items():
                    stats[f"{name}_{scope}"] = value
        return (n - first) / (t_sensor - t0), (n - first) / (now - t0)
    finally:
        if spy is not None:
            stop_profiler(spy)
        for proc in procs:
            proc.stop(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=50_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--places", type=int, default=10)
    ap.add_argument("--profile", type=Path, help="py-spy raw profile of the worker (needs py-spy)")
    ap.add_argument(
        "--profile-rate",
        type=int,
        default=50,
        help="py-spy samples a second (more: finer, but it costs the worker)",
    )
    ap.add_argument(
        "--profile-cpu",
        action="store_true",
        help="sample running threads only (shares of CPU, not of wall time: waits are left out)",
    )
    ap.add_argument("--workers", type=int, default=1, help="also measure this many workers of one app")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="worker setting")
    ap.add_argument("--mongo", default=MONGO, help="MongoDB server for the worker (default: IOT_MONGO_URI's)")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    app_id, topic, db = f"bench-{tag}", f"bench-{tag}-src", f"bench_{tag}"
    n = (args.readings // args.devices) * args.devices
    admin = AdminClient(KAFKA_CONN.librdkafka())
    TopicAdmin(KAFKA_CONN).ensure([TopicSpec(topic, PARTITIONS)])
    try:
        t = time.perf_counter()
        prefill(topic, n, args.devices, args.places)
        print(
            f"prefilled {n} readings ({args.devices} devices, {args.places} places) in "
            f"{time.perf_counter() - t:.1f}s"
        )
        base = baseline(topic, n)
        print(f"plain confluent-kafka loop (decode + windows, in memory): {base:,.0f} readings/s")
        extra = dict(e.split("=", 1) for e in args.env)
        sensor_rate, full_rate = backend_run(
            topic,
            app_id,
            db,
            n,
            args.profile,
            extra,
            args.mongo,
            profile_rate=args.profile_rate,
            profile_idle=not args.profile_cpu,
        )
        print(f"iot backend, one worker, sensor stage:                  {sensor_rate:,.0f} readings/s")
        print(f"iot backend, one worker, sensor + place stages:         {full_rate:,.0f} readings/s")
        if args.workers > 1:
            # Same readings on a second topic, produced once every worker owns partitions.
            topic2 = f"{app_id}-w{args.workers}-src"
            TopicAdmin(KAFKA_CONN).ensure([TopicSpec(topic2, PARTITIONS)])
            _, multi = backend_run(
                topic2,
                f"{app_id}-w{args.workers}",
                f"{db}_w{args.workers}",
                n,
                None,
                extra,
                args.mongo,
                args.workers,
                lambda: prefill(topic2, n, args.devices, args.places),
            )
            print(
                f"iot backend, {args.workers} workers, sensor + place stages:        {multi:,.0f} readings/s"
            )
            print(f"ratio {args.workers} workers/1 worker: {multi / full_rate:.2f}")
        if args.profile is not None:
            print(f"profile: {args.profile}; summary: bench/profile_summary.py {args.profile}")
        print(f"ratio backend/plain: {full_rate / base:.2f} (sensor stage {sensor_rate / base:.2f})")
    finally:
        mine = [x for x in admin.list_topics(timeout=10).topics if x.startswith(app_id)]
        for fut in admin.delete_topics(mine, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)
        client: MongoClient[dict[str, Any]] = MongoClient(args.mongo)
        client.drop_database(db)
        if args.workers > 1:
            client.drop_database(f"{db}_w{args.workers}")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

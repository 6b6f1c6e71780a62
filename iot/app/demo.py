"""`iot demo`: the whole product on this machine, with a live view of the windows in MongoDB.

Starts the native stack (if not running), the gateway, the backend (with small demo windows) and
virtual boards in several places, then shows the latest window per place and per sensor. A child that
exits is started again, with its reason logged and shown (iot/harness/supervisor.py: the backend's
stall exit, 75, asks for exactly that; compose's restart policy does the same). Ctrl-C (or --duration)
stops everything the demo started, in reverse order, cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
from rich.console import Console, RenderableType
from rich.live import Live

from iot import contract, log
from iot.app import demo_view
from iot.app.stack.config import StackConfig
from iot.app.stack.manager import Stack, StackError
from iot.env import CONTRACT, Variables
from iot.harness import metrics
from iot.harness.children import Children
from iot.harness.errors import ChildFailed
from iot.harness.supervisor import Supervisor

DEMO_PREFIX = "demo"
_log = log.get("iot.demo")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run the whole product locally: stack, gateway, backend, boards")
    parser.add_argument("--boards", type=int, default=6, help="virtual boards (default 6)")
    parser.add_argument("--places", type=int, default=3, help="places they are spread over (default 3)")
    parser.add_argument("--window", type=int, default=10, help="tumbling window seconds (default 10)")
    parser.add_argument("--hop-window", type=int, default=30, help="hopping window seconds (default 30)")
    parser.add_argument("--hop-step", type=int, default=10, help="hopping step seconds (default 10)")
    parser.add_argument("--grace", type=int, default=3, help="grace seconds for late readings (default 3)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between a board's readings")
    parser.add_argument(
        "--env",
        choices=("day", "constant"),
        default="day",
        help="each place's scripted environment: day (a 24 h cycle, default) or constant",
    )
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: Ctrl-C)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the native stack running at the end")
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class MetricsPorts:
    """Where the demo's gateway and backend serve metrics: the contract's defaults (what the stack's
    Prometheus scrapes) unless IOT_GATEWAY_METRICS_PORT / IOT_BACKEND_METRICS_PORT say otherwise."""

    gateway: int
    backend: int

    @classmethod
    def from_env(cls) -> MetricsPorts:
        from backend.settings import VARIABLES as BACKEND
        from gateway.settings import VARIABLES as GATEWAY

        reader = Variables(
            GATEWAY.pick("IOT_GATEWAY_METRICS_PORT"), BACKEND.pick("IOT_BACKEND_METRICS_PORT")
        ).reader()
        return cls(reader.port("IOT_GATEWAY_METRICS_PORT"), reader.port("IOT_BACKEND_METRICS_PORT"))


def _mongo_uri(cfg: StackConfig) -> str:
    """The database named by IOT_MONGO_URI (the stack config only knows the server's port)."""
    reader = CONTRACT.reader()
    return reader.mongo_uri() if reader.optional("IOT_MONGO_URI") else cfg.mongo_uri


def _sigterm_as_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _log_to_file(path: Path) -> None:
    """The demo's own log lines (the stack starting, its children starting and stopping) go to a file:
    on the terminal they were written into the live view and the spinner line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def run(args: argparse.Namespace) -> int:
    console = Console()
    cfg = StackConfig.from_env()
    stack = Stack(cfg)
    was_running = {s.name for s in stack.status() if s.healthy}
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    children = Children(cfg.state_dir / "demo")
    _log_to_file(children.log_dir / "demo.log")
    started = time.monotonic()
    try:
        with console.status("starting the native stack (first run installs it: a few minutes)…"):
            stack.up()
        console.print(f"[green]stack up[/] in {time.monotonic() - started:.0f}s")
        ports = MetricsPorts.from_env()
        env = {
            "IOT_MQTT_URL": cfg.mqtt_url,
            "IOT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "IOT_MONGO_URI": _mongo_uri(cfg),
            "IOT_WINDOW_TUMBLING_S": str(args.window),
            "IOT_WINDOW_HOPPING_S": str(args.hop_window),
            "IOT_WINDOW_HOP_STEP_S": str(args.hop_step),
            "IOT_WINDOW_GRACE_S": str(args.grace),
            "IOT_BACKEND_IDLE_TIMEOUT_S": str(max(args.window, 5)),
            "IOT_BACKEND_DATA_DIR": str(cfg.state_dir / "demo" / "backend-state"),
        }
        with console.status("starting gateway and backend…"):
            children.start_gateway("gateway", env, ports.gateway)
            children.start_backend("backend", env, ports.backend)
        children.start(
            "boards",
            [
                "boards",
                "--count",
                str(args.boards),
                "--places",
                str(args.places),
                "--interval",
                str(args.interval),
                "--prefix",
                DEMO_PREFIX,
                "--env",
                args.env,
                "--state-dir",
                str(children.log_dir / "boards"),
            ],
            env,
        )
        console.print(
            f"[green]gateway, backend and {args.boards} virtual boards running[/] "
            f"({time.monotonic() - started:.0f}s since start); logs in {children.log_dir}"
        )
        _live(console, cfg, ports, children, args, started)
    except (StackError, ChildFailed) as exc:
        console.print(f"[red]{type(exc).__name__}[/]: {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        children.stop_all()
        if not args.keep_stack and not was_running:
            stack.down()
            console.print("stopped the boards, the services and the stack the demo started")
        else:
            console.print("stopped the boards and the services; the stack keeps running (`iot stack down`)")
    return 0


def _live(
    console: Console,
    cfg: StackConfig,
    ports: MetricsPorts,
    children: Children,
    args: argparse.Namespace,
    started: float,
) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        _mongo_uri(cfg), serverSelectionTimeoutMS=3000
    )
    db = client.get_default_database(contract.DEFAULT_DATABASE)
    first_window: float | None = None
    deadline = time.monotonic() + args.duration if args.duration else None
    manifest = children.log_dir / "boards" / "boards.json"
    supervisor = Supervisor(children)
    events: list[str] = []  # the last exits and restarts, shown under the view
    # Windows of an earlier demo within the last minutes are on the screen too; the first window of
    # this one is one that ended after the demo started (naive UTC, as pymongo returns dates).
    since_start = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=time.monotonic() - started)
    with Live(console=console, refresh_per_second=1, transient=False) as live:
        while deadline is None or time.monotonic() < deadline:
            events = (events + [f"{time.strftime('%H:%M:%S')} {e}" for e in supervisor.check()])[-3:]
            places, devices = _fleet(manifest)
            since = datetime.now(UTC) - timedelta(minutes=10)
            place_rows = demo_view.latest(
                _windows(db[contract.COLL_PLACE_WINDOWS], "place", places, since), "place", places
            )
            sensor_rows = demo_view.latest(
                _windows(db[contract.COLL_SENSOR_WINDOWS], "device", devices, since), "device", devices
            )
            shown = first_window is not None
            if first_window is None and any(_ours(r.final, since_start) for r in place_rows + sensor_rows):
                first_window = time.monotonic() - started
            live.update(_view(cfg, ports, place_rows, sensor_rows, first_window, args, events))
            if not shown and first_window is not None:
                # After the update: once this is in the log, the screen shows a final window.
                _log.info("demo_first_window", seconds=round(first_window, 1))
            time.sleep(1.0)
    client.close()


def _ours(window: dict[str, Any] | None, since: datetime) -> bool:
    return window is not None and isinstance(window.get("end"), datetime) and window["end"] > since


def _fleet(manifest: Path) -> tuple[list[str], list[str]]:
    """The demo's places and devices, from the manifest `iot boards` writes before its boards start
    (hil/fleet.py); none until it is there."""
    try:
        boards = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return [], []
    return list(dict.fromkeys(b["place"] for b in boards)), [b["device"] for b in boards]


def _windows(coll: Any, key: str, keys: list[str], since: datetime) -> list[dict[str, Any]]:
    """The recent tumbling windows of these places or devices, newest first: enough per key for its
    open window, its last final one and the trend."""
    query = {key: {"$in": keys}, "kind": "tumbling", "start": {"$gte": since}}
    limit = max(1, len(keys)) * (demo_view.TREND_LENGTH + 4)
    return list(coll.find(query).sort("start", pymongo.DESCENDING).limit(limit))


def _view(
    cfg: StackConfig,
    ports: MetricsPorts,
    places: list[demo_view.Latest],
    sensors: list[demo_view.Latest],
    first_window: float | None,
    args: argparse.Namespace,
    events: list[str],
) -> RenderableType:
    gateway = f"http://127.0.0.1:{ports.gateway}/metrics"
    backend = f"http://127.0.0.1:{ports.backend}/metrics"
    counts = demo_view.Counts(
        produced=metrics.total(gateway, "iot_gateway_produced_total") or 0,
        rejected=metrics.total(gateway, "iot_gateway_rejected_total") or 0,
        # Each reading is counted by the sensor scope and again by the place scope: once, here.
        processed=metrics.total(backend, 'iot_backend_readings_total{scope="sensor"}') or 0,
    )
    lines = [
        f"Prometheus http://{cfg.host}:{cfg.prometheus_port} · metrics :{ports.gateway} (gateway) "
        f":{ports.backend} (backend) · `iot windows --last 5m` · environment: {args.env}",
        f"logs in {cfg.state_dir / 'demo'} · Ctrl-C stops everything the demo started",
        *events,
    ]
    title = (
        f"IoT demo — {args.boards} boards in {args.places} places · windows {args.window} s tumbling, "
        f"{args.hop_window} s every {args.hop_step} s"
    )
    return demo_view.view(title, counts, first_window, lines, places, sensors, args.window, DEMO_PREFIX)

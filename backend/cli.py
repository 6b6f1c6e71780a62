"""`iot backend` (the stream processor), `iot windows` (recent windows from MongoDB) and `iot readings`
(migrate the stored readings to contract revision 4; show a device's readings)."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Any

from iot import heap, log
from iot.env import CONTRACT, LOG, Variables

from . import settings as settings_mod
from .errors import ConfigError

# `iot windows` reads MongoDB only.
WINDOWS_VARIABLES = Variables(CONTRACT.pick("IOT_MONGO_URI"), LOG)


def _run_backend(_args: argparse.Namespace) -> int:
    settings = settings_mod.load()
    if settings.event_loop == "uvloop":
        _use_uvloop()
    from .app import BackendRuntime  # faust is heavy to import; only the worker needs it

    runtime = BackendRuntime(settings)
    _freeze_startup_heap()
    heap.collector_tuned()  # for the batches in flight (iot/heap.py)
    return runtime.run()


def _freeze_startup_heap() -> None:
    """Leave what exists once the worker is built (modules, classes, Faust's and the clients' objects)
    out of the cyclic garbage collector's full passes. Each full pass walked all of it: measured with
    gc.callbacks in a 250k-reading backlog, 36 full collections took 2.4 s of the worker's 15 s of
    CPU (all collections 3.3 s); frozen, 0.7 s (1.4 s), worker CPU 54 -> 46 us a reading
    (issue #24). Frozen objects are still freed when their last reference goes; garbage in cycles
    made before the freeze is collected first."""
    gc.collect()
    gc.freeze()


def _use_uvloop() -> None:
    """Before any loop exists (the worker's, and the one Faust's consumer thread makes): Faust's
    per-message hand-off is futures, tasks and callbacks, which uvloop runs in C."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        # A virtualenv made before uvloop was a dependency: run, slower, and say how to fix it.
        log.get("backend").warning(
            "event_loop_fallback", wanted="uvloop", using="asyncio", action="run `make install` to get uvloop"
        )
        return
    import mode.loop

    mode.loop.use("uvloop")


def _windows(args: argparse.Namespace) -> int:
    from .query import explain, fetch_windows, parse_duration, render

    uri = WINDOWS_VARIABLES.reader(error=ConfigError).mongo_uri("IOT_MONGO_URI")
    found = fetch_windows(uri, args.device, args.place, parse_duration(args.last), args.limit)
    if found.docs:
        print(render(found.docs))
    note = explain(found, args.device, args.place, args.last)
    if note:
        print(note, file=sys.stderr)
    return 0


def _readings(args: argparse.Namespace) -> int:
    from .query import parse_duration
    from .readings_cmd import migrate, render, show

    uri = WINDOWS_VARIABLES.reader(error=ConfigError).mongo_uri("IOT_MONGO_URI")
    if args.action == "migrate":
        migrate(uri)
        return 0
    if not args.device:
        raise ConfigError("--device", "`iot readings show` needs --device D")
    rows = show(uri, args.device, parse_duration(args.last))
    print(render(rows))
    if not rows:
        print(f"no readings of device {args.device!r} in the last {args.last}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backend",
        help="run the stream processor (iot.readings -> window averages in MongoDB)",
        description="Event-time window averages per sensor and per place. Configured by IOT_* variables.",
        epilog=settings_mod.VARIABLES.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_run_backend)
    w = subparsers.add_parser(
        "windows",
        help="print recent windows from MongoDB as a table",
        epilog=WINDOWS_VARIABLES.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = w.add_mutually_exclusive_group()
    who.add_argument("--device", help="sensor windows of this device")
    who.add_argument("--place", help="place windows of this place")
    w.add_argument("--last", default="1h", help="how far back by window start: 90s, 15m, 1h, 2d (default 1h)")
    w.add_argument("--limit", type=int, default=200, help="at most this many rows (default 200)")
    w.set_defaults(func=_windows)
    r = subparsers.add_parser(
        "readings",
        help="the stored readings: migrate them to contract revision 4 (buckets), or show a device's",
        description="migrate: rewrite revision 3 reading documents (one per reading) as revision 4 buckets;"
        " idempotent, safe beside a running backend, and resumable after a kill at any point (run it"
        " again). show: one device's readings in a time range.",
        epilog=WINDOWS_VARIABLES.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("action", choices=("migrate", "show"))
    r.add_argument("--device", help="show: the device")
    r.add_argument("--last", default="1h", help="show: how far back by ts: 90s, 15m, 1h, 2d (default 1h)")
    r.set_defaults(func=_readings)

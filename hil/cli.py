"""`iot boards` (virtual boards) and `iot flash` (a real board)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hil import fleet
from hil.flash import flash
from hil.rig import cli as rig_cli
from hil.vboard_process import DEFAULT_HEAP
from hil.virtual import vprofile
from iot.env import writable_dir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    boards = sub.add_parser(
        "boards",
        help="run virtual boards: the real firmware on the MicroPython unix port",
        epilog=fleet.VARIABLES.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    boards.add_argument("--count", type=int, default=3, help="number of boards (default 3)")
    boards.add_argument("--places", type=int, default=1, help="places they are spread over (default 1)")
    boards.add_argument("--interval", type=float, default=5.0, help="seconds between readings (default 5)")
    boards.add_argument(
        "--env",
        choices=fleet.ENV_KINDS,
        default="constant",
        help="scripted environment per place: constant (default) or day cycle",
    )
    boards.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="JSON of place -> environment spec, overriding --env per place",
    )
    boards.add_argument("--unsynced", action="store_true", help="boards start without NTP (time_valid false)")
    boards.add_argument("--prefix", default="vb", help="device id prefix (default vb)")
    boards.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: Ctrl-C)")
    boards.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where each board keeps its flash (default .cache/boards)",
    )
    boards.add_argument(
        "--fresh", action="store_true", help="wipe the boards' flash first (boot counters, outbox)"
    )
    boards.add_argument(
        "--heap", default=DEFAULT_HEAP, help=f"MicroPython heap per board (default {DEFAULT_HEAP})"
    )
    boards.add_argument(
        "--profile",
        choices=sorted(vprofile.PROFILES),
        default=vprofile.DEFAULT,
        help=f"MicroPython version the boards run: TLS module, errors, heap (default {vprofile.DEFAULT})",
    )
    boards.add_argument(
        "--serial",
        action="store_true",
        help="each board behind a serial console (a PTY, its path in boards.json), firmware in its flash",
    )
    boards.add_argument(
        "--ota-key", type=Path, default=None, help="the public key boards take updates signed with (NAME.pub)"
    )
    boards.set_defaults(func=run_boards)

    fl = sub.add_parser(
        "flash",
        help="copy the firmware and a board config to an ESP32 with mpremote",
        epilog=fleet.VARIABLES.pick("IOT_MQTT_URL", "IOT_MQTT_TLS_CA", "IOT_LOG_LEVEL").help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fl.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    fl.add_argument("--config", required=True, type=Path, help="the board's config.json")
    fl.add_argument(
        "--mpy", action="store_true", help="compile the firmware to .mpy first (less RAM at import)"
    )
    fl.add_argument("--dry-run", action="store_true", help="list what would be copied and stop")
    fl.add_argument(
        "--wait", type=float, default=90.0, help="seconds to wait for the birth message (default 90)"
    )
    fl.add_argument(
        "--mpy-arch", default="xtensawin", help="mpy-cross -march for --mpy (default xtensawin: ESP32)"
    )
    fl.add_argument(
        "--ota-key",
        type=Path,
        default=None,
        help="the public key (`iot ota keygen`'s NAME.pub) its over-the-air updates must be signed with",
    )
    fl.set_defaults(func=run_flash)
    rig_cli.register(sub)


def run_boards(args: argparse.Namespace) -> int:
    broker = fleet.Broker.from_env()
    environments = fleet.load_environments(args.env_file) if args.env_file else None
    plans = fleet.plan(
        args.count,
        args.places,
        args.interval,
        broker.url,
        args.prefix,
        args.env,
        not args.unsynced,
        extra_config=broker.tls_config(),
        environments=environments,
        profile=args.profile,
    )
    root = writable_dir("--state-dir", args.state_dir) if args.state_dir else fleet.default_state_dir()
    return fleet.run_fleet(
        plans,
        root,
        broker.url,
        args.duration,
        args.heap,
        args.fresh,
        serial=args.serial,
        tls_ca=broker.ca,
        provisioning=broker.provisioning(),
        ota_key=args.ota_key,
    )


def run_flash(args: argparse.Namespace) -> int:
    broker = fleet.Broker.from_env()
    flash(
        args.port,
        args.config,
        broker.url,
        args.mpy,
        args.dry_run,
        args.wait,
        mpy_arch=args.mpy_arch,
        tls_ca=broker.ca,
        ota_key=args.ota_key,
    )
    return 0

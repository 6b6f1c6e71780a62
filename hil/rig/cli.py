"""`iot hil check RIG` and `iot hil run RIG [--board ID] [--scenario NAME] [--junit FILE] [--report DIR]`."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
import uuid
from pathlib import Path

from hil.errors import HilError
from hil.rig import preflight, report, spec
from hil.rig.boards import RigBoard
from hil.rig.operator import console_operator
from hil.rig.record import FAILED, RunRecord
from hil.rig.runner import Runner


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hil = sub.add_parser("hil", help="hardware-in-the-loop rig: flash boards, drive scenarios, report")
    hsub = hil.add_subparsers(dest="hil_command", required=True, metavar="ACTION")
    check = hsub.add_parser(
        "check",
        help="validate a rig file, probe its ports, read each board's firmware",
        epilog=spec.VARIABLES.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("rig", type=Path)
    check.set_defaults(func=run_check)
    run = hsub.add_parser(
        "run",
        help="run a rig's scenarios on its boards against the stack",
        epilog=spec.VARIABLES.help(
            "environment variables (default; the rig file's stack.kafka and stack.mongo win)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("rig", type=Path)
    run.add_argument("--board", default=None, help="only this board id")
    run.add_argument("--scenario", default=None, help="only this scenario")
    run.add_argument("--junit", type=Path, default=None, help="write JUnit XML here")
    run.add_argument("--report", type=Path, default=None, help="directory for run.json and report.html")
    run.set_defaults(func=run_run)


def run_check(args: argparse.Namespace) -> int:
    """Everything `hil run` would trip over, before it starts: the file (board configs through the
    firmware's own checker), the services, the firmware version a flash installs, each board's port and
    the version it runs now."""
    rig = spec.load(args.rig)
    print(
        f"rig {rig.name}: {len(rig.boards)} boards, {len(rig.scenarios)} scenarios, "
        f"firmware {rig.firmware.dir} version {rig.firmware.version or '(any)'}; "
        f"stack broker={rig.stack.broker} "
        f"kafka={'private' if rig.stack.own_kafka else rig.stack.kafka.describe()} "
        f"services={rig.stack.services}"
    )
    failed = 0
    checked = preflight.services(rig)
    down = [s for s in checked if s.problem]
    for s in checked:
        if not s.problem:
            print(f"service {s.name} {s.where} ok")
    if down:
        failed += 1
        print(f"services FAILED: {preflight.services_line(down)}")
    problem = preflight.firmware_problem(rig)
    if problem:
        failed += 1
        print(f"firmware FAILED: {problem}")
    with tempfile.TemporaryDirectory(prefix="hil-check-") as tmp:
        for b in rig.boards:
            # An unreachable broker: the board only needs to boot for its version to be read.
            board = RigBoard(b, Path(tmp), ("127.0.0.1", 9), "127.0.0.1", "127.0.0.1")
            try:
                board.power_up()
                version = board.flash.read_version()
                problem = preflight.version_problem(rig, b.id, version)
                if problem:
                    failed += 1
                    print(f"board {b.id} {b.kind} port={board.port} FAILED: {problem}")
                else:
                    print(f"board {b.id} {b.kind} device={b.device} port={board.port} firmware={version} ok")
            except HilError as exc:
                failed += 1
                print(f"board {b.id} {b.kind} port={board.port} FAILED: {exc}")
            finally:
                board.shutdown()
    verdict = f"FAILED ({failed} problem{'s' if failed > 1 else ''})" if failed else "ok"
    print(f"hil check {rig.name}: {verdict}")
    return 1 if failed else 0


def run_run(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:6]
    rig = spec.load(args.rig, run_id)
    # What would fail minutes in fails now, in one line (`iot hil check` says more).
    down = [s for s in preflight.services(rig) if s.problem]
    if down:
        raise HilError(preflight.services_line(down))
    problem = preflight.firmware_problem(rig)
    if problem:
        raise HilError(problem)
    workdir = (args.report or Path.cwd() / ".cache" / "hil" / run_id).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"hil run {run_id} rig={rig.name} boards={len(rig.boards)} scenarios={len(rig.scenarios)} "
        f"dir={workdir}"
    )
    # SIGTERM (a CI job cancelled) stops the run like Ctrl-C: boards, services and broker go down.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # At a terminal, boards with `power: manual` are switched by the operator when a step asks.
        runner = Runner(rig, workdir, board=args.board, scenario=args.scenario, operator=console_operator())
        record = runner.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    paths = report.write(record, args.report or workdir, args.junit)
    print(summary(record))
    for p in paths:
        print(f"wrote {p}")
    return 1 if record.summary()[FAILED] or not record.cases else 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def summary(record: RunRecord) -> str:
    s = record.summary()
    return (
        f"hil run {record.run_id} rig={record.rig} boards={len(record.boards)} "
        f"scenarios={len({c.scenario for c in record.cases})} cases={len(record.cases)} passed={s['passed']} "
        f"failed={s['failed']} skipped={s['skipped']} seconds={record.ended - record.started:.0f} "
        f"at={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record.ended))}"
    )

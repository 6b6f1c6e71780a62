"""An over-the-air update of a virtual fleet, as `iot ota push` does it, with its accounting and timings.

Against the native stack's broker (accounts from `iot stack up`), N provisioned virtual boards run the
firmware compiled (.mpy, as boards that take updates should) and trust a key made for the run:

1. baseline: one board updated alone to 0.2.0 (its time is the ratio's denominator);
2. the other N-1 with a canary of 2 (`--canary 2`, 10 at a time), one of them losing its power a third
   into its transfer;
3. 0.3.0, a build that raises at import, pushed to every board with a canary of 1: the canary rolls
   back by itself and the push stops there (the rest are `skipped`, still on 0.2.0).

Then every reading every board published is accounted for by (device, boot, seq): none missing inside
a boot, none reused with another payload. MQTT only (no gateway: the boards run with e2e_ack off, so a
PUBACK releases a reading, as tests/hil does). Stops every board it started and removes the accounts.

    .venv/bin/python bench/ota_fleet.py --count 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fleetops import bundle, push
from fleetops.operator import Session, Target
from hil import flash, fleet, paths
from hil.probe import Probe
from hil.vboard_process import EXIT_CONFIG, VirtualBoard
from iot.devices.provision import Provisioner


def _firmware(root: Path) -> Path:
    compiled = root / "compiled"
    flash.compile_mpy(compiled, "")
    for name in paths.ENTRY_FILES:
        shutil.copyfile(paths.FIRMWARE / name, compiled / name)
    return compiled


def _bundles(root: Path) -> tuple[bytes, bundle.Bundle, bundle.Bundle]:
    key, pub, _kid = bundle.keygen(root, "bench")
    broken = root / "broken-fw"
    shutil.copytree(paths.FIRMWARE, broken)
    node = broken / "node.py"
    node.write_text('raise RuntimeError("broken build")\n' + node.read_text())
    good = bundle.build(paths.FIRMWARE, "0.2.0", key, root / "good.bin", mpy=True)
    bad = bundle.build(broken, "0.3.0", key, root / "broken.bin", mpy=True)
    return pub.read_bytes(), good, bad


class Power(threading.Thread):
    """Powers a board up again whenever it stops (a reset, a watchdog, a power cut), as a chip would."""

    def __init__(self, boards: list[VirtualBoard]) -> None:
        super().__init__(daemon=True)
        self.boards = boards
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for b in self.boards:
                if b.returncode not in (None, EXIT_CONFIG) and not b.running:
                    b.start()


def _cut_a_third_in(session: Session, board: VirtualBoard, size: int, done: threading.Event) -> None:
    """Power off `board` once its transfer passed a third (it is powered up again by Power)."""
    while not done.wait(0.05):
        h = session.heard(board.device).health or {}
        if h.get("update_state") == "receiving" and int(h.get("update_have") or 0) > size // 3:
            board.kill()
            print(f"power cut: {board.device} at {h['update_have']} of {size} bytes", flush=True)
            return


def _accounting(probe: Probe, devices: list[str]) -> dict[str, Any]:
    missing = reused = published = boots = 0
    for d in devices:
        seen: dict[tuple[int, int], set[str]] = {}
        for m in probe.messages("reading", d):
            r = m.json()
            body = {k: v for k, v in r.items() if k not in ("fw",)}
            seen.setdefault((int(r["boot"]), int(r["seq"])), set()).add(json.dumps(body, sort_keys=True))
        per_boot: dict[int, set[int]] = {}
        for boot, seq in seen:
            per_boot.setdefault(boot, set()).add(seq)
        boots += len(per_boot)
        published += len(seen)
        missing += sum(max(s) + 1 - len(s) for s in per_boot.values())
        reused += sum(1 for v in seen.values() if len(v) > 1)
    return {
        "boards": len(devices),
        "boots": boots,
        "readings": published,
        "missing": missing,
        "reused": reused,
    }


def _summary(name: str, outcomes: list[push.Outcome], seconds: float) -> dict[str, Any]:
    states: dict[str, int] = {}
    for o in outcomes:
        states[o.state] = states.get(o.state, 0) + 1
    done = [o for o in outcomes if o.state not in ("skipped",)]
    out = {
        "phase": name,
        "seconds": round(seconds, 1),
        "states": states,
        "ota_s_median": round(sorted(o.seconds for o in done)[len(done) // 2], 1) if done else None,
        "transfer_s_median": round(sorted(o.transfer_s for o in done)[len(done) // 2], 1) if done else None,
        "resends": sum(o.resends for o in outcomes),
        "errors": sorted({o.error for o in outcomes if o.error}),
    }
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--trial", type=int, default=120)
    args = p.parse_args(argv)
    broker = fleet.Broker.from_env()
    settings = broker.provisioning()
    if settings is None:
        print("no operator account: run `iot stack up` (or set IOT_MQTT_OPERATOR_*)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="ota-fleet-"))
    prefix = f"otab{int(time.time()) % 100000}"
    plans = fleet.plan(args.count, 2, args.interval, broker.url, prefix=prefix)
    devices = [pl.device for pl in plans]
    boards: list[VirtualBoard] = []
    power = None
    try:
        started = time.monotonic()
        compiled = _firmware(root)
        pub, good, bad = _bundles(root)
        print(f"bundles {good.size} and {bad.size} bytes in {time.monotonic() - started:.1f}s", flush=True)
        with Provisioner.open(settings) as prov:
            passwords = prov.ensure_all([(pl.place, pl.device, None) for pl in plans])
        for pl in plans:
            cfg = {
                **pl.config,
                "mqtt_user": pl.device,
                "mqtt_password": passwords[pl.device],
                "e2e_ack": False,
            }
            b = VirtualBoard(root / "boards", cfg, pl.spec, firmware_dir=compiled)
            b.write_files()
            b.flash.write("ota.pub", pub)
            boards.append(b)
        targets = [Target(b.device, b.place) for b in boards]
        with (
            Probe(
                broker.url,
                ["sensors/+/+/#"],
                keep=lambda t: t.split("/")[2] in set(devices),
                username=settings.operator.username,
                password=settings.operator.password,
            ) as probe,
            Session(settings, targets) as session,
        ):
            for b in boards:
                b.start()
            power = Power(boards)
            power.start()
            deadline = time.monotonic() + 120
            while len({m.topic.split("/")[2] for m in probe.messages("reading")}) < len(boards):
                if time.monotonic() > deadline:
                    print("not every board published within 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            print(f"{len(boards)} boards publishing", flush=True)
            results = []
            t0 = time.monotonic()
            base = push.rollout(session, targets[:1], good, 0, 1, args.trial, 600, print)
            results.append(_summary("baseline: 1 board alone", base, time.monotonic() - t0))
            done = threading.Event()
            cutter = threading.Thread(
                target=_cut_a_third_in, args=(session, boards[3], good.size, done), daemon=True
            )
            cutter.start()
            t0 = time.monotonic()
            rest = push.rollout(session, targets[1:], good, 2, 10, args.trial, 900, print)
            done.set()
            results.append(
                _summary(f"{len(targets) - 1} boards, canary 2, a power cut", rest, time.monotonic() - t0)
            )
            t0 = time.monotonic()
            broken = push.rollout(session, targets, bad, 1, 10, 60, 600, print)
            results.append(_summary("a build that raises at import, canary 1", broken, time.monotonic() - t0))
            time.sleep(3 * args.interval)  # readings after the last reboot, for the accounting
            acc = _accounting(probe, devices)
            versions: dict[str, int] = {}
            for d in devices:
                fw = str((session.heard(d).health or {}).get("fw"))
                versions[fw] = versions.get(fw, 0) + 1
            ratio = (
                results[1]["ota_s_median"] / results[0]["ota_s_median"] if results[0]["ota_s_median"] else 0
            )
            print(
                json.dumps(
                    {
                        "accounting": acc,
                        "versions_at_end": versions,
                        "fleet_per_board_vs_alone": round(ratio, 2),
                    }
                ),
                flush=True,
            )
            return 0 if acc["missing"] == 0 and acc["reused"] == 0 else 1
    finally:
        if power is not None:
            power.stop.set()
            power.join(5)
        for b in boards:
            b.stop()
        try:
            with Provisioner.open(settings) as prov:
                for d in devices:
                    prov.remove(d)
        except Exception as exc:  # the accounts are throwaway: say so, do not hide the result
            print(
                f"could not remove the bench's accounts ({exc}); `iot devices remove` them", file=sys.stderr
            )
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""`iot config set | show` and `iot ota keygen | build | push | status`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleetops import bundle, push, remote
from fleetops.operator import Session, Target, select
from iot import contract
from iot.devices.provision import DevicesSettings
from iot.devices.registry import UNREADABLE, Registry
from iot.env import stack_dir

_EPILOG = """The broker is IOT_MQTT_URL (IOT_MQTT_TLS_CA for mqtts://), the registry IOT_MONGO_URI; the
operator's account comes from IOT_MQTT_OPERATOR_USERNAME/IOT_MQTT_OPERATOR_PASSWORD, else from the native
stack's credentials file (`iot stack up` writes it). Wire and payloads: docs/CONTRACT.md."""


def _targets_args(p: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        p.add_argument("device", nargs="?", default=None, help="one board")
    else:
        p.add_argument("--device", default=None, help="one board")
    p.add_argument("--place", default=None, help="every board of a place")
    p.add_argument("--all", action="store_true", help="every provisioned board")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser(
        "config", help="remote configuration of boards (retained on their config topic)", epilog=_EPILOG
    )
    cactions = config.add_subparsers(dest="action", required=True)
    cset = cactions.add_parser(
        "set",
        help="set fields of boards' config.json remotely (checked by the firmware's checker first)",
        epilog="Fields and ranges: firmware/README.md. Those that change how the board connects "
        "(broker, Wi-Fi, ...) restart it on trial: back to the config it had unless online within --trial. "
        + _EPILOG,
    )
    _targets_args(cset, positional=True)
    cset.add_argument(
        "pairs", nargs="*", metavar="FIELD=VALUE", help="e.g. interval_s=5 broker=mqtt://10.0.0.2"
    )
    cset.add_argument("--unset", action="append", default=[], metavar="FIELD", help="back to config.json's")
    cset.add_argument(
        "--trial",
        type=int,
        default=remote.TRIAL_S,
        help=f"seconds a restart has to get back online (default {remote.TRIAL_S})",
    )
    cset.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for the boards to report it (default 30; 0: do not wait)",
    )
    cset.set_defaults(func=_config_set)
    cshow = cactions.add_parser("show", help="a board's wanted config and what it applied", epilog=_EPILOG)
    cshow.add_argument("device")
    cshow.add_argument("--json", action="store_true")
    cshow.set_defaults(func=_config_show)

    ota = sub.add_parser("ota", help="signed over-the-air firmware updates", epilog=_EPILOG)
    oactions = ota.add_subparsers(dest="action", required=True)
    keygen = oactions.add_parser("keygen", help="a new signing key: DIR/NAME.pem (private) and DIR/NAME.pub")
    keygen.add_argument("--out", type=Path, default=None, help="folder (default <stack dir>/ota)")
    keygen.add_argument("--name", default="ota")
    keygen.set_defaults(func=_keygen)
    build = oactions.add_parser("build", help="a signed update bundle of a firmware folder")
    build.add_argument("--firmware", type=Path, required=True, help="the firmware folder (firmware/)")
    build.add_argument("--version", required=True, help="stamped into its config.py (FW_VERSION)")
    build.add_argument("--key", type=Path, required=True, help="the private key (`iot ota keygen`)")
    build.add_argument("--out", type=Path, required=True, help="the bundle file")
    build.add_argument("--mpy", action="store_true", help="compile the modules to .mpy (less heap on boards)")
    build.add_argument("--arch", default="", help="mpy-cross -march (xtensawin: ESP32; default bytecode)")
    build.add_argument("--force", action="store_true", help="boards may install it over a newer version")
    build.set_defaults(func=_build)
    pushp = oactions.add_parser("push", help="update boards: a canary first, then the rest", epilog=_EPILOG)
    pushp.add_argument("bundle", type=Path)
    _targets_args(pushp, positional=False)
    pushp.add_argument("--canary", type=int, default=0, help="update this many boards first (default 0)")
    pushp.add_argument("--parallel", type=int, default=10, help="boards at a time after the canary")
    pushp.add_argument(
        "--trial",
        type=int,
        default=300,
        help="seconds the new version has to get a reading acked end to end (default 300)",
    )
    pushp.add_argument("--timeout", type=float, default=900.0, help="per board (default 900 s)")
    pushp.add_argument("--json", action="store_true", help="the outcomes as JSON on stdout")
    pushp.set_defaults(func=_push)
    status = oactions.add_parser("status", help="each board's firmware and update state", epilog=_EPILOG)
    _targets_args(status, positional=False)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def _open(
    args: argparse.Namespace, every_default: bool = False
) -> tuple[DevicesSettings, Registry, list[Target]]:
    settings = DevicesSettings.from_env()
    registry = Registry.connect(settings.mongo_uri)
    try:
        registry.ping()
        every = args.all or (every_default and not (args.device or args.place))
        targets = select(registry, args.device, args.place, every)
    except BaseException:
        registry.close()
        raise
    return settings, registry, targets


# --- iot config -----------------------------------------------------------------------------------


def _config_set(args: argparse.Namespace) -> int:
    changes = remote.parse_pairs(args.pairs)
    if not changes and not args.unset:
        print("nothing to set: give FIELD=VALUE pairs or --unset FIELD", file=sys.stderr)
        return 2
    settings, registry, targets = _open(args)
    try:
        with Session(settings, targets) as session:
            session.settle()  # the boards' retained health: whether one refused its last revision
            deliveries = remote.deliver(session, registry, targets, changes, args.unset, args.trial)
            for d in deliveries:
                if d.refused:
                    left_out = json.dumps(remote.masked(d.dropped))
                    print(
                        f"{d.target.device}: rev {d.rev - 1} was refused ({d.refused}); rev {d.rev} starts "
                        f"from the config it runs, without {left_out} (give them again to retry)"
                    )
                how = f"restarts on trial for up to {args.trial}s" if d.restart else "applies at once"
                print(f"{d.target.device}: rev {d.rev} sent ({how}): {json.dumps(remote.masked(d.wanted))}")
            if args.wait <= 0:
                return 0
            longest = args.wait + (args.trial if any(d.restart for d in deliveries) else 0)
            results = remote.wait_applied(session, deliveries, longest, print, registry)
    finally:
        registry.close()
    return 0 if all(state == "applied" for state, _detail in results.values()) else 1


def _config_show(args: argparse.Namespace) -> int:
    settings = DevicesSettings.from_env()
    registry = Registry.connect(settings.mongo_uri)
    try:
        doc = registry.get(args.device)
    finally:
        registry.close()
    if doc is None:
        print(f"no device {args.device!r} in the registry", file=sys.stderr)
        return 1
    target = Target(args.device, str(doc["place"]))
    with Session(settings, [target]) as session:
        session.settle()
        health = session.heard(args.device).health or {}
    wanted = doc.get("config") or {}
    refused = remote.refusal(wanted, health or None)
    row: dict[str, Any] = {
        "device": args.device,
        "place": target.place,
        "wanted_rev": wanted.get("rev", 0),
        "wanted": remote.masked(wanted.get("set") or {}),
        "applied_rev": health.get(contract.HEALTH_CONFIG_REV, doc.get(contract.HEALTH_CONFIG_REV)),
        "trial_rev": health.get("config_trial"),
        "error": doc.get(UNREADABLE) or health.get("config_error") or refused or None,
        "online": bool(doc.get("online")),
        # What the next `iot config set` adds its fields to: the wanted ones, or after a refusal the
        # ones the board runs.
        "next_set_from": remote.masked(
            remote.base(wanted, health or None, remote.applied_rev(doc, health or None))
        ),
    }
    if args.json:
        print(json.dumps(row, indent=1))
        return 0
    for key, value in row.items():
        print(f"{key:<14} {'-' if value in (None, {}) else value}")
    if row["applied_rev"] != row["wanted_rev"] and not row["error"]:
        print("note: the board has not reported the wanted revision yet (offline, or restarting on trial)")
    if refused:
        print(
            f"note: rev {row['wanted_rev']} was refused: the next `iot config set` starts from the config "
            "the board runs (next_set_from); give a refused field again to retry it"
        )
    return 0


# --- iot ota --------------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    folder = args.out or stack_dir() / "ota"
    private, public, kid = bundle.keygen(folder, args.name)
    print(f"signing key {private} (mode 0600, keep it secret and backed up: boards trust only it)")
    print(f"public key  {public}  id {kid}: put it on boards with `iot flash --ota-key {public}`")
    return 0


def _build(args: argparse.Namespace) -> int:
    b = bundle.build(args.firmware, args.version, args.key, args.out, args.mpy, args.arch, args.force)
    print(
        f"bundle {args.out}: version {b.version}, id {b.id}, {len(b.files)} files, {b.size} bytes, "
        f"signed by key {b.key}{' (force: may go back)' if b.force else ''}"
    )
    return 0


def _push(args: argparse.Namespace) -> int:
    b = bundle.read(args.bundle)
    settings, registry, targets = _open(args)
    registry.close()
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    say(f"pushing {b.version} ({b.id}, {b.size} bytes) to {len(targets)} boards")
    with Session(settings, targets) as session:
        outcomes = push.rollout(
            session, targets, b, args.canary, args.parallel, args.trial, args.timeout, say
        )
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes], indent=1))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    say("done: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 0 if all(o.ok for o in outcomes) else 1


def _status(args: argparse.Namespace) -> int:
    settings, registry, targets = _open(args, every_default=True)
    try:
        docs = {t.device: registry.get(t.device) or {} for t in targets}
    finally:
        registry.close()
    with Session(settings, targets) as session:
        session.settle()
        rows = []
        for t in targets:
            doc = docs[t.device]
            h = session.heard(t.device).health or {}
            rows.append(
                {
                    "device": t.device,
                    "place": t.place,
                    "online": bool(doc.get("online")),
                    "fw": h.get("fw", doc.get("fw")),
                    "update_state": h.get("update_state", doc.get(contract.HEALTH_UPDATE_STATE)),
                    "update_version": h.get("update_version"),
                    "progress": f"{h['update_have']}/{h['update_size']}" if "update_have" in h else None,
                    "error": h.get("update_error"),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'DEVICE':<24} {'PLACE':<12} {'ONLINE':<7} {'FW':<10} {'UPDATE':<12} {'TO':<10} DETAIL")
    for r in rows:
        detail = r["error"] or r["progress"] or ""
        print(
            f"{r['device']:<24} {r['place']:<12} {'yes' if r['online'] else 'no':<7} {r['fw'] or '-':<10} "
            f"{r['update_state'] or '-':<12} {r['update_version'] or '-':<10} {detail}"
        )
    return 0

"""Remote configuration and over-the-air updates end to end: provisioned virtual boards (the firmware
on the unix port, littlefs flash) on a broker with accounts, driven by `iot config` and `iot ota`'s
code (fleetops) as the operator, every reading the boards publish accounted for by (device, boot, seq)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymongo
import pytest

from fleetops import bundle, push, remote
from fleetops.bundle import Bundle
from fleetops.errors import RolloutError
from fleetops.operator import Session, Target
from hil import flash, paths
from hil.probe import Probe
from hil.vboard_process import EXIT_CONFIG, VirtualBoard
from iot import contract
from iot.devices.provision import DevicesSettings
from iot.devices.registry import UNREADABLE, Registry
from iot.errors import ConfigError
from iot.harness.broker import PrivateBroker
from iot.harness.children import run
from tests.hil.conftest import BoardFactory, provisioned
from tests.services import IOT, REPO
from tests.support import unique, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The boards run the firmware compiled (a board loads ota.py only while it receives an update: on
    its heap the sources do not compile by then, iot flash --mpy). The repository's firmware as
    0.2.0; a 0.3.0 whose node.py raises at import; 0.2.0 signed by a key the boards do not trust."""
    root = tmp_path_factory.mktemp("ota")
    key, pub, _kid = bundle.keygen(root, "ours")
    other, _opub, _okid = bundle.keygen(root, "theirs")
    broken = root / "broken-fw"
    shutil.copytree(paths.FIRMWARE, broken)
    node = broken / "node.py"
    node.write_text('raise RuntimeError("broken build")\n' + node.read_text())
    compiled = root / "compiled"
    flash.compile_mpy(compiled, "")
    for name in paths.ENTRY_FILES:
        shutil.copyfile(paths.FIRMWARE / name, compiled / name)
    return {
        "pub": pub.read_bytes(),
        "firmware": compiled,
        "good": bundle.build(paths.FIRMWARE, "0.2.0", key, root / "good.bin", mpy=True),
        "broken": bundle.build(broken, "0.3.0", key, root / "broken.bin", mpy=True),
        "theirs": bundle.build(paths.FIRMWARE, "0.2.0", other, root / "theirs.bin", mpy=True),
    }


@pytest.fixture
def board(
    make_board: BoardFactory, settings: DevicesSettings, auth_broker: PrivateBroker, bundles: dict[str, Any]
) -> VirtualBoard:
    """A provisioned board running 0.1.0 compiled, trusting the key `bundles` signs with."""
    board, _ = provisioned(
        make_board, settings, auth_broker, "fo", interval_s=0.5, firmware_dir=bundles["firmware"]
    )
    board.write_files()
    board.flash.write("ota.pub", bundles["pub"])
    board.start()
    return board


@pytest.fixture
def target(board: VirtualBoard) -> Target:
    return Target(board.device, board.place)


def operator_probe(broker: PrivateBroker, topics: list[str]) -> Probe:
    """A probe on `topics` logged in as the operator, who may read every board's topics."""
    return Probe(broker.url, topics, username=broker.operator.username, password=broker.operator.password)


@pytest.fixture
def heard(auth_broker: PrivateBroker, board: VirtualBoard) -> Iterator[Probe]:
    """Everything the board publishes, heard as the operator (so the accounting sees every reading)."""
    with operator_probe(auth_broker, [f"sensors/+/{board.device}/#"]) as probe:
        yield probe


@pytest.fixture
def registry(settings: DevicesSettings) -> Iterator[Registry]:
    """The device registry the operator's commands keep (MongoDB `devices`)."""
    reg = Registry.connect(settings.mongo_uri)
    yield reg
    reg.close()


@contextmanager
def _powered(board: VirtualBoard) -> Iterator[None]:
    """The chip around the board: powered up again after every reset, watchdog or power cut (the
    unix port's process ends with the firmware), as hil/fleet.py's supervisor does for `iot boards`."""
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(0.1):
            if board.returncode not in (None, EXIT_CONFIG) and not board.running:
                board.start()

    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _accounting(probe: Probe, device: str) -> dict[str, Any]:
    """Readings the board published: per boot, the seqs seen; missing ones inside a boot; copies."""
    seen: dict[int, list[int]] = {}
    for r in probe.readings(device):
        seen.setdefault(int(r["boot"]), []).append(int(r["seq"]))
    missing = sum(max(s) + 1 - len(set(s)) for s in seen.values())
    return {
        "boots": sorted(seen),
        "published": sum(len(set(s)) for s in seen.values()),
        "missing": missing,
        "first_seq": {b: min(s) for b, s in seen.items()},
    }


def _rollout(
    settings: DevicesSettings, board: VirtualBoard, target: Target, b: Bundle, timeout_s: float = 180
) -> push.Outcome:
    with Session(settings, [target]) as session, _powered(board):
        (out,) = push.rollout(session, [target], b, trial_s=60, timeout_s=timeout_s, say=print)
    return out


def _config_show(auth_broker: PrivateBroker, settings: DevicesSettings, device: str) -> dict[str, Any]:
    """`iot config show DEVICE --json` as the operator runs it, on this test's broker and registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env.update(
        IOT_MQTT_URL=auth_broker.url,
        IOT_MONGO_URI=settings.mongo_uri,
        **auth_broker.operator.as_env("operator"),
    )
    done = run([str(IOT), "config", "show", device, "--json"], 60, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def test_an_update_over_mqtt_runs_the_new_version_and_loses_no_reading(
    board: VirtualBoard,
    target: Target,
    heard: Probe,
    settings: DevicesSettings,
    bundles: dict[str, Any],
    registry: Registry,
) -> None:
    """A board configured remotely first: fleet.py unloads the idle remote config for ota.py."""
    with Session(settings, [target]) as session:
        (live,) = remote.deliver(session, registry, [target], {"health_every_s": 4}, [])
        assert remote.wait_applied(session, [live], 30, print)[board.device] == ("applied", "")
    wait_for(lambda: heard.readings(board.device)[3:], 30, "readings from 0.1.0")
    out = _rollout(settings, board, target, bundles["good"], timeout_s=90)
    assert out.state == "updated", out
    healths = [m.json() for m in heard.messages("health", board.device)]
    health = [h for h in healths if h.get("fw") == "0.2.0"]
    assert health[-1]["update_state"] == "updated" and health[-1]["update_version"] == "0.2.0"
    assert health[-1]["config_rev"] == 1  # the remote config stays, across the update too
    new = lambda: [r for r in heard.readings(board.device) if r["fw"] == "0.2.0"][3:]  # noqa: E731
    wait_for(new, 30, "0.2.0 readings")
    acc = _accounting(heard, board.device)
    assert acc["missing"] == 0, acc
    assert len(acc["boots"]) >= 2 and all(v == 0 for v in acc["first_seq"].values()), acc
    console = board.console()
    assert "ota_swap" in console and "ota_committed" in console and "Traceback" not in console
    assert "no heap" not in console and "node_crashed" not in console, "the update ran out of heap"


def test_a_build_that_raises_at_import_is_rolled_back_and_the_reason_reported(
    board: VirtualBoard, target: Target, heard: Probe, settings: DevicesSettings, bundles: dict[str, Any]
) -> None:
    wait_for(lambda: heard.readings(board.device)[2:], 30, "readings")
    out = _rollout(settings, board, target, bundles["broken"])
    assert out.state == "rolled_back", out
    assert out.error == "crashed at import: RuntimeError: broken build"
    wait_for(
        lambda: [r for r in heard.readings(board.device)[-3:] if r["fw"] == "0.1.0"][2:],
        30,
        "0.1.0 readings after the rollback",
    )
    acc = _accounting(heard, board.device)
    assert acc["missing"] == 0, acc
    assert "ota_rollback" in board.console()


def test_a_bundle_signed_by_another_key_is_refused_before_its_files_come(
    board: VirtualBoard, target: Target, heard: Probe, settings: DevicesSettings, bundles: dict[str, Any]
) -> None:
    wait_for(lambda: heard.readings(board.device), 30, "a reading")
    out = _rollout(settings, board, target, bundles["theirs"])
    assert out.state == "refused" and "signed by another key" in out.error
    assert out.sent_bytes < 3 * 8192  # the header was enough to refuse it
    assert board.running and "ota_swap" not in board.console()


def test_power_cuts_during_the_transfer_and_during_the_swap_leave_one_whole_version(
    board: VirtualBoard,
    target: Target,
    heard: Probe,
    settings: DevicesSettings,
    registry: Registry,
    bundles: dict[str, Any],
) -> None:
    """On a board configured remotely: the transfer resumes at boot with its remote config. Before:
    "no heap to load ota.py (15,584 bytes free)", and the board kept its version."""
    b = bundles["good"]
    with Session(settings, [target]) as session, _powered(board):
        wait_for(lambda: heard.readings(board.device)[2:], 30, "readings")
        (live,) = remote.deliver(session, registry, [target], {"health_every_s": 4}, [])
        assert remote.wait_applied(session, [live], 30, print)[board.device] == ("applied", "")
        board.cut_power_in_boot(5)  # armed: the swap's 5th flash operation
        transfer = push.Transfer(session, target, b, 1, 60, 240, print)
        assert transfer.start() is None
        cut = False
        outcome = None
        while outcome is None:
            outcome = transfer.poll()
            if not cut and transfer.last_have > b.size // 3:
                board.kill()  # the power goes in the middle of the transfer (powered up again)
                cut = True
            session.wait(0.05)
        assert outcome.state == "updated", outcome
        wait_for(
            lambda: [r for r in heard.readings(board.device) if r["fw"] == "0.2.0"][3:], 30, "0.2.0 readings"
        )
        acc = _accounting(heard, board.device)
    console = board.console()
    assert cut and "ota_resume" in console and "power_cut during=boot.py" in console
    assert "no heap" not in console and "node_crashed" not in console, "the update ran out of heap"
    assert acc["missing"] == 0, acc


def test_remote_config_applies_live_and_a_broker_it_cannot_reach_is_rolled_back_and_not_sent_again(
    board: VirtualBoard,
    target: Target,
    heard: Probe,
    auth_broker: PrivateBroker,
    settings: DevicesSettings,
    registry: Registry,
) -> None:
    with Session(settings, [target]) as session, _powered(board):
        wait_for(lambda: heard.readings(board.device)[2:], 30, "readings")
        with pytest.raises(ConfigError, match=r"interval_s: must be at least 0\.28 s"):
            remote.deliver(session, registry, [target], {"interval_s": 0.2}, [])  # the host's check
        (live,) = remote.deliver(session, registry, [target], {"interval_s": 1}, [])
        assert not live.restart
        assert remote.wait_applied(session, [live], 30, print)[board.device] == ("applied", "")
        (bad,) = remote.deliver(session, registry, [target], {"broker": "mqtt://127.0.0.1:9"}, [], trial_s=10)
        assert bad.restart
        state, detail = remote.wait_applied(session, [bad], 90, print, registry)[board.device]
        assert state == "refused" and "not online within 10 s" in detail, detail
        health = session.heard(board.device).health or {}
        assert health["config_rev"] == 1 and health["config_error"].startswith("rev 2:")
        wanted = (registry.get(board.device) or {})["config"]
        assert wanted["rev"] == 2 and wanted["refused"] == {"rev": 2, "error": detail}
        shown = _config_show(auth_broker, settings, board.device)
        assert shown["error"] == detail and shown["next_set_from"] == {"interval_s": 1}, shown
        # The next change starts from rev 1, the config the board runs: the broker it could not reach
        # is not sent again (before: rev 3 carried it, restarted the board on trial and was refused).
        (after,) = remote.deliver(session, registry, [target], {"interval_s": 2}, [])
        assert after.wanted == {"interval_s": 2} and not after.restart, after
        assert after.dropped == {"broker": "mqtt://127.0.0.1:9"} and after.refused == detail, after
        assert remote.wait_applied(session, [after], 30, print, registry)[board.device] == ("applied", "")
        acc = _accounting(heard, board.device)
    assert acc["missing"] == 0, acc


def test_an_unreadable_wanted_config_stops_the_set_and_a_deleted_one_starts_above_the_boards(
    settings: DevicesSettings, auth_broker: PrivateBroker, registry: Registry
) -> None:
    """Stored documents are input. A `device_configs` document that is no wanted config (edited by
    hand, written by a broken tool) made every registry read raise KeyError: `iot devices list`,
    `iot config show` and a fleet-wide `iot config set` stopped for every board. Now the fleet is
    listed, the set refuses before anything is sent to any board, and once the document is deleted
    the next revision is above the one the board runs (a board ignores one that is not)."""
    good, bad = unique("fo"), unique("fo")
    for device in (good, bad):
        registry.add(device, "kitchen")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri)
    db = client.get_default_database()
    try:
        registry.set_config(good, {"rev": 1, "set": {"interval_s": 2}, "trial_s": 120, "sets": {}})
        db[contract.COLL_DEVICES].update_one({"_id": bad}, {"$set": {contract.HEALTH_CONFIG_REV: 5}})
        # Written by hand with the fields at the top: there is no `config`.
        db[contract.COLL_DEVICE_CONFIGS].insert_one({"_id": bad, "rev": 7, "set": {"interval_s": 1}})
        listed = {d["_id"]: d for d in registry.all()}
        assert listed[good]["config"]["rev"] == 1 and UNREADABLE not in listed[good]
        shown = registry.get(bad)
        assert shown is not None and "config" not in shown
        assert "device_configs" in shown[UNREADABLE] and "config is NoneType" in shown[UNREADABLE]
        targets = [Target(good, "kitchen"), Target(bad, "kitchen")]
        with (
            operator_probe(
                auth_broker, [f"sensors/kitchen/{device}/config" for device in (good, bad)]
            ) as probe,
            Session(settings, targets) as session,
        ):
            with pytest.raises(RolloutError, match=f"{bad}: its wanted config is unreadable"):
                remote.deliver(session, registry, targets, {"interval_s": 3}, [])
            db[contract.COLL_DEVICE_CONFIGS].delete_one({"_id": bad})
            sent = remote.deliver(session, registry, targets, {"interval_s": 3}, [])
            assert [(d.target.device, d.rev) for d in sent] == [(good, 2), (bad, 6)]
            # One publisher, in order: had the refused set sent anything, it would be heard first.
            wait_for(lambda: len(probe.messages("config")) >= 2, 10, "the two config messages")
            heard = [(m.topic.split("/")[2], m.json()["rev"]) for m in probe.messages("config")]
            assert heard == [(good, 2), (bad, 6)]
    finally:  # the broker is the module's own and keeps nothing: its retained messages go with it
        client.close()


def test_a_session_settles_once_every_target_was_heard_and_gives_up_on_one_never_seen(
    settings: DevicesSettings, auth_broker: PrivateBroker
) -> None:
    """`iot config` and `iot ota` read each board's retained health before they act (did it refuse its
    last revision? which version runs?). The session waits until every target was heard with its
    retained status and health; a board that never connected has neither, and is given up on at the
    deadline instead of holding the command."""
    seen, never = unique("fo"), unique("fo")
    with operator_probe(auth_broker, [f"sensors/kitchen/{seen}/#"]) as probe:
        session = Session(settings, [])
        with session:
            session.publish(f"sensors/kitchen/{seen}/status", b"online", retain=True)
            session.publish(f"sensors/kitchen/{seen}/health", b'{"fw": "0.1.0", "boot": 3}', retain=True)
        wait_for(lambda: len(probe.messages()) >= 2, 10, "the retained status and health")
    with Session(settings, [Target(seen, "kitchen")]) as session:
        session.settle(seconds=30)
        heard = session.heard(seen)
        assert heard.status == "online" and heard.health == {"fw": "0.1.0", "boot": 3}
        assert heard.health_retained
    with Session(settings, [Target(seen, "kitchen"), Target(never, "kitchen")]) as session:
        session.settle(seconds=1)
        assert session.heard(seen).health == {"fw": "0.1.0", "boot": 3}
        assert session.heard(never).health is None and session.heard(never).status == ""

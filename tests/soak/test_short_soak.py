"""The short fleet soak (bench/soak.py) on a private stack: a few hundred boards for about two minutes
while a hostile board attacks and every component is SIGKILLed once. Nothing may be lost or doubled,
and every final window must equal the readings stored for it. Performance figures come from the
benchmark, not from here."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot.harness.children import run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
KILLED = ("gateway0", "backend", "kafka", "mosquitto", "ferretdb")


@pytest.fixture
def soak_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: concurrent pytest sessions on this machine prune old basetemp folders, and
    # that took a running soak's stack data away from under it.
    folder = Path(tempfile.mkdtemp(prefix="iot-soak-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(1800)
def test_every_component_sigkilled_once_under_load_loses_and_doubles_nothing(soak_dir: Path) -> None:
    summary = soak_dir / "soak.json"
    argv = [
        sys.executable,
        str(REPO / "bench" / "soak.py"),
        "--devices", "200",
        "--places", "10",
        "--minutes", "2",
        "--warmup", "10",
        "--tail", "10",
        "--pause", "5",
        "--ack-timeout", "10",
        "--tumbling", "30",
        "--hopping", "60",
        "--hop-step", "30",
        "--grace", "5",
        "--idle", "30",
        # The backend is the slow part on a shared 2-core machine: give it time to catch up before a
        # reading that never reached MongoDB counts as lost.
        "--drain-timeout", "900",
        "--json", str(summary),
        "--keep", str(soak_dir / "run"),
    ]  # fmt: skip
    # Past its deadline SIGTERM, not SIGKILL: the soak then stops its private stack and services.
    done = run(argv, 1500, grace=180)
    report = done.stdout + done.stderr[-4000:]
    assert done.returncode != -signal.SIGTERM, f"the soak did not finish in 1500 s:\n{report}"
    assert summary.exists(), f"the soak wrote no summary:\n{report}"
    r = json.loads(summary.read_text())

    assert [f["fault"] for f in r["faults"]] == [
        "hostile",
        "gateway",
        "backend",
        "kafka",
        "mosquitto",
        "ferretdb",
        "boards",
    ]
    assert all(f["ok"] for f in r["faults"]), r["faults"]
    for name in KILLED:
        assert r["rss"][name]["restarted"], f"{name} was not really killed and restarted"
    assert r["published"] >= 200 * 100, report
    assert r["missing"] == 0, f"lost readings, e.g. {r['missing_examples']}\n{report}"
    assert r["stored_once"] == r["published"], report
    assert r["stored_twice"] == 0 and r["phantom"] == 0, report
    assert r["board_dropped"] == 0 and r["board_unacked_at_end"] == 0, report
    assert r["kafka"]["distinct"] == r["published"], report
    # A hostile board first (bench/soak_hostile.py), its retained poison there for every later fault:
    # its valid readings stored once, none of its poison stored, and no gateway exited on its own.
    hostile = r["hostile"]
    assert hostile["stored_once"] == hostile["valid_published"] > 0, hostile
    assert not (hostile["missing"] or hostile["doubled"] or hostile["unexpected"]), hostile
    assert not any(name.startswith("gateway") for name in r["unplanned_exits"]), r["unplanned_exits"]
    for coll, w in r["windows"].items():
        assert w["final_checked"] > 0, f"{coll}: no final window to check"
        assert w["final_differing"] == 0, f"{coll}: windows differ, e.g. {w['examples']}\n{report}"
        assert w["not_final"] == 0 and w["absent"] == 0, f"{coll}: {w}"
    assert r["ok"] and done.returncode == 0, report

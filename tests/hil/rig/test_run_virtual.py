"""`iot hil run` on the shipped CI rig (hil/rigs/virtual.yaml, its timings cut short), through the real
CLI, against the native stack; then what its JUnit XML and JSON run record say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

from hil import paths
from iot import contract

pytestmark = [pytest.mark.hil, pytest.mark.integration]
RIG = paths.REPO / "hil" / "rigs" / "virtual.yaml"
# The short cut: the same scenarios and steps, the 60 s outage and the waits shorter.
SHORTER = {"cut_network": 10}
MONGO_URI = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"])


def _short_cut(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    raw = yaml.safe_load(RIG.read_text())
    for scenario in raw["scenarios"]:
        for i, step in enumerate(scenario["steps"]):
            if isinstance(step, dict):
                ((name, arg),) = step.items()
                if name in SHORTER and isinstance(arg, (int, float)) and arg > 0:
                    scenario["steps"][i] = {name: min(arg, SHORTER[name])}
    path = tmp_path / "virtual-short.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def _iot_hil(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`iot hil ...`; stopped with SIGTERM if the test ends first, so the rig stops its boards,
    gateway, backend and broker (SIGKILL would leave them running)."""
    argv = [sys.executable, "-m", "iot.app.cli", "hil", *args]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=paths.REPO, env=dict(os.environ)
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.timeout(900)  # ~4 min alone; the whole suite on 2 shared cores measured past the 300 s default
def test_virtual_rig_passes_every_scenario_on_every_board_and_reports_it(tmp_path: Path) -> None:
    rig, raw = _short_cut(tmp_path)
    junit, report = tmp_path / "junit.xml", tmp_path / "report"
    proc = _iot_hil("run", str(rig), "--junit", str(junit), "--report", str(report), timeout=840)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "scenario 1/5 flash_and_verify" in out and "hil run " in out  # progress as it goes

    boards = [b["id"] for b in raw["boards"]]
    scenarios = [s["name"] for s in raw["scenarios"]]
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert sorted((c.get("name"), c.get("classname")) for c in cases) == sorted(
        (s, f"hil.virtual.{b}") for s in scenarios for b in boards
    )
    assert suite.get("failures") == "0" and suite.get("skipped") == "0"
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["firmware_version"] == raw["firmware"]["version"]
        assert props["board_id"] in boards and props["port"].endswith("/tty")

    record = json.loads((report / "run.json").read_text())
    assert record["summary"] == {"passed": len(boards) * len(scenarios), "failed": 0, "skipped": 0}
    for case in record["cases"]:
        assert all(s["outcome"] == "passed" and s["ended"] >= s["started"] for s in case["steps"])
        assert case["console"], f"no console log for {case['board']} {case['scenario']}"
        expect = [s for s in case["steps"] if s["name"] == "expect"][-1]
        measured = {m["name"]: m for m in expect["measurements"]}
        # Every reading published reached Kafka and MongoDB once; no seq went missing.
        for name in ("missing_in_kafka", "missing_in_mongo", "seq_gaps"):
            assert measured[name]["value"] == 0 and measured[name]["limit"] == 0
        assert measured["readings_published"]["value"] >= 5
        assert measured["mongo_copies_max"]["value"] == 1
        assert all(m["outcome"] == "passed" for m in measured.values())
        assert any(n.startswith("window_mean_error_") for n in measured), measured.keys()
    outage = next(c for c in record["cases"] if c["scenario"] == "outage_60s")
    assert [s["name"] for s in outage["steps"]][:1] == ["cut_network"]
    assert 9 <= outage["steps"][0]["ended"] - outage["steps"][0]["started"] < 20
    assert {e["kind"] for e in record["events"]} >= {"reading", "window", "fault", "step"}
    assert "<svg" in (report / "report.html").read_text()
    # What ran where, a plot of each board against its scripted environment, its console as a file.
    assert record["meta"]["rig_file"] == str(rig) and record["meta"]["host"] and record["meta"]["commit"]
    assert suite.get("timestamp") and suite.get("hostname") == record["meta"]["host"]
    for series in record["series"]:
        for metric in ("temperature", "humidity", "pressure", "luminosity"):
            assert len(series["readings"][metric]) >= 20 and series["windows"][metric]
            assert len(series["expected"][metric]) >= len(series["readings"][metric])  # nulls in faults
        assert (report / "console" / f"{series['board']}.log").read_text().strip()
    fault = next(c for c in record["cases"] if c["scenario"] == "sensor_fault_and_environment")
    assert any(s["args"] == {"sensor": "bme280", "kind": "nack", "seconds": 8} for s in fault["steps"])


@pytest.mark.timeout(400)
def test_a_board_failing_a_step_is_broken_and_its_later_scenarios_are_skipped(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(
        yaml.safe_dump(
            {
                "rig": "breaks",
                "stack": {"broker": "private", "services": "start"},
                "firmware": {"version": "0.0.0-not-this-one"},
                "board_config": {"interval_s": 1, "health_every_s": 2},
                "boards": [{"id": "a", "place": "kitchen"}],
                "scenarios": [
                    {"name": "verify", "steps": ["verify_version"]},
                    {"name": "later", "steps": [{"wait": 1}]},
                ],
            }
        )
    )
    proc = _iot_hil("run", str(rig), "--report", str(tmp_path / "r"), timeout=360)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = {c["scenario"]: c for c in json.loads((tmp_path / "r" / "run.json").read_text())["cases"]}
    assert cases["verify"]["outcome"] == "failed"
    assert "0.0.0-not-this-one" in cases["verify"]["detail"]
    assert cases["later"]["outcome"] == "skipped" and "broken earlier" in cases["later"]["detail"]
    junit = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert junit.get("failures") == "1" and junit.get("skipped") == "1"
    # The run's own database is gone with it (a failed run too: the report holds what it measured).
    run_id = json.loads((tmp_path / "r" / "run.json").read_text())["run_id"]
    assert f"stack dropped database hil_{run_id}" in proc.stdout + proc.stderr
    with pymongo.MongoClient(MONGO_URI, serverSelectionTimeoutMS=10_000) as mongo:
        assert f"hil_{run_id}" not in mongo.list_database_names()

"""The reports a run writes, from a record made here: what a reader of report.html and a CI reading
junit.xml need to find in them (the run on the CI rig: tests/hil/rig/test_run_virtual.py)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.rig import report
from hil.rig.record import BoardEvent, BoardSeries, CaseRecord, Measurement, RunRecord, StepRecord

pytestmark = pytest.mark.unit
T0 = 1_790_000_000.0


def _record() -> RunRecord:
    record = RunRecord(
        "bench",
        "abc123",
        T0,
        T0 + 150,
        meta={
            "date": "2026-09-21 14:13:20 UTC",
            "host": "rig-host-1",
            "rig_file": "hil/rigs/virtual.yaml",
            "firmware_dir": "/src/firmware",
            "firmware_version": "0.1.0",
            "commit": "0123456789ab",
            "run_id": "abc123",
        },
    )
    step = StepRecord(
        "sensor_fault",
        "scenarios[3].steps[0].sensor_fault",
        T0 + 20,
        T0 + 28,
        args={"sensor": "bme280", "kind": "nack", "seconds": 8.0},
        measurements=[Measurement.check("latency_p95_s", 0.3, 5, "s")],
    )
    case = CaseRecord("faults", "kitchen", "hil-kitchen", "virtual", "/dev/pts/3", T0 + 20, T0 + 60)
    case.steps.append(step)
    case.console = "node_boot mem_free=42000\n\x01raw repl"
    record.cases.append(case)
    record.boards.append(
        {
            "id": "kitchen",
            "device": "hil-kitchen",
            "kind": "virtual",
            "port": "/dev/pts/3",
            "place": "kitchen",
            "state": "online",
            "broken": "",
            "firmware": "0.1.0",
        }
    )
    record.events += [
        BoardEvent("kitchen", "fault", T0 + 20, T0 + 28, "bme280 nack"),
        BoardEvent("kitchen", "reading", T0 + 30, T0 + 30.1, "boot 1 seq 7"),
    ]
    series = BoardSeries("kitchen")
    series.readings["temperature"] = [(T0 + 10 + i, 21.5 + (i % 3) * 0.01) for i in range(60)]
    series.expected["temperature"] = [(T0 + 10 + i, 21.5 if i < 40 else 30.0) for i in range(60)]
    series.windows["temperature"] = [(T0 + 10, T0 + 15, 21.51)]
    record.series.append(series)
    record.consoles["kitchen"] = "the whole console\n"
    return record


def test_steps_are_named_with_their_arguments() -> None:
    page = report.html_report(_record())
    assert "sensor_fault sensor=bme280 kind=nack seconds=8" in page
    text = report.junit(_record())
    assert "sensor_fault sensor=bme280 kind=nack seconds=8 passed 8.0s" in text


def test_the_page_says_when_where_and_what_ran() -> None:
    page = report.html_report(_record())
    for value in ("2026-09-21 14:13:20 UTC", "rig-host-1", "hil/rigs/virtual.yaml", "0123456789ab", "0.1.0"):
        assert f"<td>{value}" in page or value in page, value


def test_the_timeline_has_a_time_axis_and_a_legend() -> None:
    page = report.html_report(_record())
    timeline = page[page.index("<h3>Timeline") : page.index("<h3>Readings")]
    # Ticks every 15 s over 150 s (at most ten), labelled since the start and with the UTC clock.
    ticks = re.findall(r"text-anchor='middle'>([0-9:s]+)</text>", timeline)
    assert ticks[:3] == ["0s", "15s", "30s"] and ticks[-1] == "2:30"
    assert "14:13:20" in timeline
    for kind in ("step", "stimulus", "fault", "window", "reading"):
        assert f">{kind}</text>" in timeline


def test_readings_are_plotted_against_the_imposed_environment() -> None:
    page = report.html_report(_record())
    charts = page[page.index("<h3>Readings") :]
    temperature = charts[: charts.index("</svg>")]
    assert ">imposed</text>" in temperature and ">readings</text>" in temperature
    assert temperature.count("<circle cx=") == 60 + 1  # the readings and the legend's dot
    assert temperature.count("<polyline") == 1  # the scripted environment, stepping to 30 °C
    assert "window mean 21.51" in temperature
    assert "humidity</text>" not in charts  # nothing measured, no chart


def test_junit_carries_timestamps_hostname_and_the_runs_properties() -> None:
    suite = ET.fromstring(report.junit(_record()))
    assert suite.get("timestamp") == "2026-09-21T14:13:20" and suite.get("hostname") == "rig-host-1"
    props = {p.get("name"): p.get("value") for p in suite.find("properties") or []}
    assert props["commit"] == "0123456789ab" and props["rig_file"] == "hil/rigs/virtual.yaml"
    (case,) = suite.findall("testcase")
    assert case.get("timestamp") == "2026-09-21T14:13:40"
    assert "\\x01raw repl" in (case.findtext("system-out") or "")  # control bytes made printable


def test_each_boards_console_is_a_file_beside_the_report(tmp_path: Path) -> None:
    written = report.write(_record(), tmp_path, None)
    assert (tmp_path / "console" / "kitchen.log").read_text() == "the whole console\n"
    assert {p.name for p in written} >= {"report.html", "run.json", "junit.xml", "console"}

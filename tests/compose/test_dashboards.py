"""Grafana provisioning and dashboards: valid JSON, wired to the provisioned datasource, variables
defined before use. (tests/e2e evaluates every panel query against the live Prometheus.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit
GRAFANA = Path(__file__).resolve().parents[2] / "compose" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def datasource_uid() -> str:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    return str(ds["uid"])


def test_the_four_dashboards_exist_with_unique_uids() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {"Sensors", "Pipeline", "Host", "Fleet"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "iot.yml").read_text())
    assert doc["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = (GRAFANA.parent / "docker-compose.yml").read_text()
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in compose


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_queries_the_provisioned_prometheus(path: Path) -> None:
    uid = datasource_uid()
    dash = json.loads(path.read_text())
    variables = {v["name"] for v in dash["templating"]["list"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"


def test_sensors_dashboard_has_place_and_device_variables_and_all_four_metrics() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "sensors.json").read_text())
    assert {"place", "device"} <= {v["name"] for v in dash["templating"]["list"]}
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("temperature", "humidity", "pressure", "luminosity"):
        assert f'metric="{metric}"' in exprs
    assert "iot_backend_sensor_window_mean" in exprs and "iot_backend_place_window_mean" in exprs


def _panels() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, panel) for p in DASHBOARDS for panel in json.loads(p.read_text())["panels"]]


@pytest.mark.parametrize(("_dashboard", "panel"), _panels(), ids=lambda v: v if isinstance(v, str) else "")
def test_states_read_as_words_in_colour_and_levels_have_thresholds(
    _dashboard: str, panel: dict[str, Any]
) -> None:
    """A 0/1 state (online, up, connected) is shown as a word in its colour, not a number in one colour;
    a stat or state panel colours by thresholds with more than one step."""
    defaults = panel["fieldConfig"]["defaults"]
    exprs = " ".join(t["expr"] for t in panel["targets"])
    if panel["type"] in ("stat", "state-timeline"):
        assert len(defaults["thresholds"]["steps"]) >= 2 or "rate(" in exprs, panel["title"]
    counted = re.search(r"\b(sum|count)\(", exprs)
    state = re.search(r"device_online|mqtt_connected|kafka_up|\bup\{", exprs) and not counted
    if state and panel["type"] in ("stat", "state-timeline"):
        (mapping,) = defaults["mappings"]
        words = {k: v["text"] for k, v in mapping["options"].items()}
        colours = {mapping["options"][k]["color"] for k in ("0", "1")}
        assert set(words) == {"0", "1"} and len(colours) == 2, panel["title"]


def test_a_board_health_table_shows_what_the_gateway_exports_per_board() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "sensors.json").read_text())
    (table,) = [p for p in dash["panels"] if p["type"] == "table"]
    exprs = " ".join(t["expr"] for t in table["targets"])
    for field in ("rssi", "mem_free", "outbox_depth", "crashes"):
        assert f'field="{field}"' in exprs
    assert "iot_gateway_device_last_reading_timestamp_seconds" in exprs and "device_online" in exprs
    # One row per board: every query keeps exactly the place and device labels, which merge joins on.
    assert all(t["expr"].startswith("max by (place, device) (") for t in table["targets"])
    assert [t["id"] for t in table["transformations"]][:1] == ["merge"]


def test_the_fleet_dashboard_shows_versions_trials_rollbacks_offline_and_a_row_per_board() -> None:
    """Issue #22's fleet view: versions across the fleet, boards on trial, rolled back, offline, and
    per board its firmware, update state, configuration revision and health."""
    dash = json.loads((GRAFANA / "dashboards" / "fleet.json").read_text())
    assert {"place", "device"} <= {v["name"] for v in dash["templating"]["list"]}
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dash["panels"]}
    assert "count by (fw) (iot_gateway_device_firmware" in by_title["Firmware versions across the fleet"]
    assert 'update_state="trial"' in by_title["Boards on trial"]
    assert 'update_state="rolled_back"' in by_title["Rolled back"]
    assert "iot_gateway_device_online" in by_title["Boards offline"]
    (table,) = [p for p in dash["panels"] if p["type"] == "table"]
    exprs = " ".join(t["expr"] for t in table["targets"])
    assert "(place, device, fw, update_state) (iot_gateway_device_firmware" in exprs
    assert 'field="config_rev"' in exprs and "iot_gateway_device_online" in exprs
    assert [t["id"] for t in table["transformations"]][:1] == ["merge"]


# What a latency panel's quantile reads: its grouping labels and its histogram.
QUANTILE = re.compile(
    r"histogram_quantile\([\d.]+, sum by \(([\w, ]+)\) \(rate\((\w+)_bucket\[\$__rate_interval\]"
)


def _quantile_targets() -> list[tuple[str, str]]:
    return [
        (f"{dashboard}:{panel['title']}:{target['legendFormat']}", target["expr"])
        for dashboard, panel in _panels()
        for target in panel["targets"]
        if "histogram_quantile" in target["expr"]
    ]


def _histogram(metric: str, labels: list[str], group: str, values: str) -> list[dict[str, str]]:
    """A histogram's series for one group (every grouping label set to `group`): all observations in
    its first bucket, so a quantile of it is a number whatever the quantile."""
    sel = ", ".join(f'{label}="{group}"' for label in labels)
    buckets = [
        {"series": f'{metric}_bucket{{le="{le}", {sel}}}'.replace(", }", "}"), "values": values}
        for le in ("0.1", "+Inf")
    ]
    return [*buckets, {"series": f"{metric}_count{{{sel}}}", "values": values}]


@pytest.mark.parametrize(("name", "expr"), _quantile_targets(), ids=[n for n, _e in _quantile_targets()])
def test_a_latency_quantile_has_no_point_where_nothing_was_timed_not_nan(
    name: str, expr: str, tmp_path: Path
) -> None:
    """histogram_quantile of buckets whose rates are all 0 is NaN (0/0), and Grafana draws NaN: a
    collection the backend did not write within the rate's window (the `readings` series of the
    MongoDB write latency panel, seen NaN in tests/e2e when all of a run's readings writes came
    before the first scrape of a new series), or a gateway with nothing to produce. Such a window
    must have no point. Checked by the real promtool on series of a group that observes (rising
    counters) and one that does not (flat): the panel gives a number for the first, nothing for
    the second. (`>= bool 0` turns a number into 1 and NaN into 0, so no float is compared.)"""
    match = QUANTILE.search(expr)
    assert match, f"{name}: a quantile panel this test cannot read: {expr}"
    labels = [label.strip() for label in match.group(1).split(",") if label.strip() != "le"]
    metric = match.group(2)
    shown = f"({expr.replace('$__rate_interval', '1m')}) >= bool 0"
    busy, idle = "0+7x40", "3+0x40"  # 15 s apart: rising over 10 minutes, and flat
    one = "{" + ", ".join(f'{label}="busy"' for label in labels) + "}"
    cases: list[tuple[list[dict[str, str]], list[dict[str, Any]]]] = [
        (_histogram(metric, labels, "busy", busy), [{"labels": one, "value": 1}]),
        (_histogram(metric, labels, "idle", idle), []),
    ]
    if labels:  # per group: one group's writes must not let another's empty window through
        cases.append(
            (
                _histogram(metric, labels, "busy", busy) + _histogram(metric, labels, "idle", idle),
                [{"labels": one, "value": 1}],
            )
        )
    tests = [
        {
            "interval": "15s",
            "input_series": series,
            "promql_expr_test": [{"expr": shown, "eval_time": "5m", "exp_samples": expected}],
        }
        for series, expected in cases
    ]
    assert_promtool_passes(tests, tmp_path)


def assert_promtool_passes(tests: list[dict[str, Any]], tmp_path: Path) -> None:
    """Run promtool's unit tests `tests` (input series and the samples a query must give)."""
    (tmp_path / "rules.yml").write_text("groups: []\n")
    (tmp_path / "panel.test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests}))
    result = subprocess.run(
        ["promtool", "test", "rules", "panel.test.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_lie_side_by_side_within_the_grid_never_on_one_another(path: Path) -> None:
    panels = json.loads(path.read_text())["panels"]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            assert not _overlap(a["gridPos"], b["gridPos"]), f"{a['title']} and {b['title']} overlap"


def test_the_pipeline_dashboard_shows_each_gateways_in_flight_peak_beside_its_in_flight(
    tmp_path: Path,
) -> None:
    """iot_gateway_in_flight_peak (the most readings a gateway held unconfirmed, against its
    IOT_GATEWAY_MAX_IN_FLIGHT) sits on the row of the gateway's in-flight panel, next to it, and shows
    each gateway's own peak: promtool evaluates the panel's query on two gateways' series, and a sum
    (a number no gateway ever held) or a single line would fail."""
    dash = json.loads((GRAFANA / "dashboards" / "pipeline.json").read_text())
    by_expr = {t["expr"]: p for p in dash["panels"] for t in p["targets"]}
    (peak,) = {id(p): p for e, p in by_expr.items() if "iot_gateway_in_flight_peak" in e}.values()
    in_flight = by_expr["sum(iot_gateway_in_flight)"]
    assert peak["title"].startswith("Gateway: ") and peak["type"] == "timeseries"
    here, there = peak["gridPos"], in_flight["gridPos"]
    assert here["y"] == there["y"] and here["h"] == there["h"], "not on the in-flight panel's row"
    assert here["x"] in (there["x"] + there["w"], there["x"] - here["w"]), "not next to the in-flight panel"
    (target,) = peak["targets"]
    assert set(re.findall(r"{{\s*(\w+)\s*}}", target["legendFormat"])) == {"instance"}
    metric = "iot_gateway_in_flight_peak"
    series = [  # 15 s apart: gateway a peaked at 5,000 early, b is still climbing to 80
        {"series": f'{metric}{{instance="a:9108", job="gateway"}}', "values": "1200 5000+0x40"},
        {"series": f'{metric}{{instance="b:9108", job="gateway"}}', "values": "0+2x40"},
    ]
    expected = [
        {"labels": '{instance="a:9108"}', "value": 5000},
        {"labels": '{instance="b:9108"}', "value": 80},
    ]
    tests = [
        {
            "interval": "15s",
            "input_series": series,
            "promql_expr_test": [{"expr": target["expr"], "eval_time": "10m", "exp_samples": expected}],
        }
    ]
    assert_promtool_passes(tests, tmp_path)

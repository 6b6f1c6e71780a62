"""Grafana provisioning and dashboards: valid JSON, wired to the provisioned datasource, variables
defined before use. (tests/e2e evaluates every panel query against the live Prometheus.)"""

from __future__ import annotations

import json
import re
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

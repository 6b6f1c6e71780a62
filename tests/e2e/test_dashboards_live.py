"""Every Grafana panel's query, evaluated on the real Prometheus after this run's pipeline ran, returns
series carrying the labels its legend shows, keeps to this run's places and boards where the dashboard
filters by them, and shows the values it should: a window mean is the mean of a final window stored in
MongoDB, an activity the run caused is above zero. A query ending in `or vector(0)` is checked without
its fallback too, so a misspelt metric cannot hide behind the zero."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from iot import contract
from tests.e2e.conftest import CFG, Run
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hil]
DASHBOARDS = sorted(
    (Path(__file__).resolve().parents[2] / "compose" / "grafana" / "dashboards").glob("*.json")
)


def panel_targets() -> list[tuple[str, str, str, str]]:
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                out.append((path.stem, panel["title"], target["expr"], target.get("legendFormat", "")))
    return out


def query(expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """The query's series now, or at the instant `at` (epoch seconds)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    url = f"http://{CFG.host}:{CFG.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


FALLBACK = " or vector(0)"
# Panels whose value must be above zero after this run: the steady activity of its boards. (One-off
# events, such as the run's single malformed message, may fall before the first scrape of a counter,
# which rate() then cannot see; test_one_off_events_of_the_run_are_counted checks those.)
ACTIVE = {
    ("pipeline", "received"),
    ("pipeline", "produced to iot.readings"),
    ("pipeline", "acked to MQTT"),
    ("pipeline", "p50"),
    ("pipeline", "p99"),
    ("pipeline", "{{scope}}"),
    ("pipeline", "{{scope}} {{kind}}"),
    ("pipeline", "p99 {{collection}}"),
    ("pipeline", "{{job}}"),
    ("pipeline", "mqtt"),
    ("pipeline", "kafka"),
    ("pipeline", "produced"),
    ("pipeline", "peak {{instance}}"),  # each reading is in flight a while: the gateway's peak is >= 1
    ("sensors", "{{place}}/{{device}} last reading"),
    ("sensors", "{{place}}/{{device}} mem_free"),
    ("fleet", "{{fw}}"),  # the run's boards, counted by their firmware version
}
# Values below zero are right for these: Wi-Fi signal in dBm.
NEGATIVE = {("sensors", "{{place}}/{{device}} rssi")}


# Panels of events this run does not cause (clock guard, amendments: tests/e2e and tests/backend
# cover those): their series may be absent, but each metric they name must be exported.
RARE = {
    ("pipeline", "{{place}}/{{device}}"),
    ("pipeline", "windows {{scope}}"),
    ("pipeline", "readings {{scope}}"),
    ("sensors", "{{place}} {{scope}}"),
    ("fleet", "{{place}}/{{device}} config_rev"),  # boards configured remotely (tests/hil/test_fleet_ops.py)
}


def substitute(expr: str, run: Run) -> str:
    # What Grafana would send with the variables set to this run's places and boards; rates over
    # 10 minutes so that they cover the whole run, which ended before the tests read it.
    places = "|".join(run.places)
    return (
        expr.replace("$__rate_interval", "10m")
        .replace("$place", places)
        .replace("$device", f"{run.tag}-.*")
        .replace("$window", ".*")
    )


@pytest.mark.parametrize(
    ("dashboard", "title", "expr", "legend"),
    panel_targets(),
    ids=[f"{d}:{t}:{i}" for i, (d, t, _e, _l) in enumerate(panel_targets())],
)
def test_panel_query_returns_series_with_its_legend_labels(
    run: Run, dashboard: str, title: str, expr: str, legend: str
) -> None:
    labels = set(re.findall(r"{{\s*(\w+)\s*}}", legend))
    promql = substitute(expr, run)

    def answered() -> list[dict[str, Any]]:
        return [s for s in query(promql) if labels <= set(s["metric"])]

    if (dashboard, legend) in RARE:
        assert_exported_without_fallback(expr.removesuffix(FALLBACK), run)
        series = answered()
    else:
        series = wait_for(answered, 45, f"{dashboard} / {title}: {promql}", interval=1.0)
    # (A stat panel sums over the filtered series: no place or device label is left to check.)
    if "$place" in expr:
        places = [s["metric"]["place"] for s in series if "place" in s["metric"]]
        assert all(p in run.places for p in places), "the place variable did not filter"
    if "$device" in expr:
        devices = [s["metric"]["device"] for s in series if "device" in s["metric"]]
        assert all(d in run.devices for d in devices), "the device variable did not filter"
    values = {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in series}
    assert all(math.isfinite(v) for v in values.values()), values
    if (dashboard, legend) in NEGATIVE:
        assert values and max(values.values()) < 0, f"{title} / {legend}: {values}"
    else:
        assert all(v >= 0 for v in values.values()), values
    if (dashboard, legend) in ACTIVE:
        assert values and max(values.values()) > 0, f"{title} / {legend}: no activity of the run: {values}"
    if "_window_mean" in expr:
        assert_means_are_stored_final_windows(run, series)
    if "histogram_quantile" in expr:
        assert_quantiles_exactly_where_observed(expr, promql)
    if expr.endswith(FALLBACK):
        assert_exported_without_fallback(expr.removesuffix(FALLBACK), run)


def assert_means_are_stored_final_windows(run: Run, series: list[dict[str, Any]]) -> None:
    """A mean gauge holds the mean of the last final window of its key, kind and size: it must be the
    mean of one of the final windows stored in MongoDB for them."""
    for s in series:
        labels = s["metric"]
        kind, size = labels["window"].rsplit("_", 1)
        if "device" in labels:
            coll, key = run.db[contract.COLL_SENSOR_WINDOWS], {"device": labels["device"]}
        else:
            coll, key = run.db[contract.COLL_PLACE_WINDOWS], {"place": labels["place"]}
        finals = coll.find({**key, "kind": kind, "size_s": int(size.removesuffix("s")), "final": True})
        means = [w[labels["metric"]]["mean"] for w in finals]
        value = float(s["value"][1])
        assert any(m is not None and math.isclose(m, value, rel_tol=1e-12) for m in means), (
            f"{labels}: gauge {value} is the mean of none of the {len(means)} stored final windows {means}"
        )


QUANTILE = re.compile(r"histogram_quantile\([\d.]+, sum by \(([\w, ]+)\) \(rate\((\w+)_bucket\[")


def assert_quantiles_exactly_where_observed(expr: str, promql: str) -> None:
    """A latency panel shows a quantile for exactly the groups (a collection, or the one gateway
    series) with observations in the window. Which groups those are depends on when Prometheus
    scraped (a new series' first scrape may already hold all of a run's writes: no increase), so
    the test does not guess them: it asks the histogram's count at the same instant."""
    match = QUANTILE.search(expr)
    assert match, f"a quantile panel this test cannot read: {expr}"
    labels = [label.strip() for label in match.group(1).split(",") if label.strip() != "le"]
    observed_promql = f"sum by ({', '.join(labels)}) (increase({match.group(2)}_count[10m])) > 0"
    at = time.time()

    def groups(series: list[dict[str, Any]]) -> list[tuple[str, ...]]:
        return sorted(tuple(s["metric"].get(label, "") for label in labels) for s in series)

    observed = groups(query(observed_promql, at))
    assert groups(query(promql, at)) == observed, f"{promql} at {at}: shown for other groups than {observed}"


def assert_exported_without_fallback(expr: str, run: Run) -> None:
    """Without `or vector(0)` the query must still be valid, and each metric it names must be one
    the services export (its HELP line is on their /metrics even before the first sample)."""
    query(substitute(expr, run))
    exposition = "".join(
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for port in (contract.GATEWAY_METRICS_PORT, contract.BACKEND_METRICS_PORT)
    )
    for name in set(re.findall(r"\b(iot_[a-z_]+)", expr)):
        family = name.removesuffix("_total")
        assert f"# HELP {family} " in exposition or f"# HELP {name} " in exposition, (
            f"{name} is exported by neither the gateway nor the backend: the panel only ever shows 0"
        )


@pytest.mark.parametrize(
    ("promql", "what"),
    [
        ('iot_gateway_rejected_total{reason="malformed_json", job="gateway"}', "the malformed message"),
        ('iot_backend_duplicates_total{scope="sensor", job="backend"}', "the redelivered duplicate"),
        ('iot_backend_late_total{scope="sensor", job="backend"}', "the reading past allowed lateness"),
    ],
)
def test_one_off_events_of_the_run_are_counted(run: Run, promql: str, what: str) -> None:
    """The counters behind the DLQ and duplicate panels hold the run's injected events."""
    assert run.dlq, "the run recorded its DLQ records"
    series = wait_for(lambda: query(promql), 45, f"{what}: {promql}", interval=1.0)
    assert max(float(s["value"][1]) for s in series) >= 1, f"{what} is not counted: {series}"

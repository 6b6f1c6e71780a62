"""Every Grafana panel's query, evaluated on the real Prometheus while the pipeline runs, returns series
carrying the labels its legend shows."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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


def query(expr: str) -> list[dict[str, Any]]:
    url = f"http://{CFG.host}:{CFG.prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def substitute(expr: str, run: Run) -> str:
    # What Grafana would send with the variables set to this run's places and boards.
    places = "|".join(run.places)
    return (
        expr.replace("$__rate_interval", "1m")
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

    series = wait_for(answered, 45, f"{dashboard} / {title}: {promql}", interval=1.0)
    if "$place" in expr:
        assert all(s["metric"]["place"] in run.places for s in series), "the place variable did not filter"

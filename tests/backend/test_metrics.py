"""The window-mean gauges Grafana shows: the latest window's mean per series, amendments included."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from backend.accumulators import WindowAcc
from backend.metrics import BackendMetrics
from backend.records import PLACE, SENSOR, window_doc
from backend.windows import TUMBLING, WindowKey

pytestmark = pytest.mark.unit
T0 = 1_750_000_000_000 - 1_750_000_000_000 % 10_000


def _doc(scope: str, start: int, temperatures: list[float], revision: int = 0) -> dict[str, Any]:
    acc = WindowAcc()
    for i, t in enumerate(temperatures):
        acc.add(
            {
                "device": "d1",
                "place": "hall",
                "temperature": t,
                "humidity": None,
                "pressure": None,
                "luminosity": None,
            },
            offset=i,
        )
    key = "d1" if scope == SENSOR else "hall"
    return window_doc(
        scope, key, "hall", WindowKey(TUMBLING, 10_000, 10_000, start), acc, True, start, revision
    )


def _mean(metrics: BackendMetrics, scope: str) -> float | None:
    if scope == SENSOR:
        labels = {"device": "d1", "place": "hall", "metric": "temperature", "window": "tumbling_10s"}
        return metrics.registry.get_sample_value("iot_backend_sensor_window_mean", labels)
    labels = {"place": "hall", "metric": "temperature", "window": "tumbling_10s"}
    return metrics.registry.get_sample_value("iot_backend_place_window_mean", labels)


@pytest.mark.parametrize("scope", [SENSOR, PLACE])
def test_an_amendment_of_the_latest_window_moves_its_mean_gauge(scope: str) -> None:
    metrics = BackendMetrics(CollectorRegistry())
    metrics.show_window(scope, _doc(scope, T0, [20.0, 22.0]))
    assert _mean(metrics, scope) == 21.0
    metrics.show_window(scope, _doc(scope, T0, [20.0, 22.0, 27.0], revision=1))
    assert _mean(metrics, scope) == 23.0


@pytest.mark.parametrize("scope", [SENSOR, PLACE])
def test_an_amendment_of_an_older_window_leaves_the_latest_mean_shown(scope: str) -> None:
    metrics = BackendMetrics(CollectorRegistry())
    metrics.show_window(scope, _doc(scope, T0, [10.0]))
    metrics.show_window(scope, _doc(scope, T0 + 10_000, [30.0]))
    metrics.show_window(scope, _doc(scope, T0, [10.0, 12.0], revision=1))
    assert _mean(metrics, scope) == 30.0

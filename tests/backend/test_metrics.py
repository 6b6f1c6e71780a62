"""The window-mean gauges Grafana shows: the latest window's mean per series, amendments included; the
MongoDB latency series there from the start."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from backend.accumulators import WindowAcc
from backend.metrics import BackendMetrics
from backend.records import PLACE, SENSOR, window_doc
from backend.windows import TUMBLING, WindowKey
from iot import contract, readings_store

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


def test_every_collection_the_backend_writes_or_reads_has_its_latency_series_from_the_start() -> None:
    """A series born with its first observation has no earlier sample for rate() to rise from: a
    collection written once in a burst between two scrapes showed no latency at all (Pipeline
    dashboard, 'Backend: MongoDB write latency'). Each is there at 0 before the first write."""
    registry = CollectorRegistry()
    BackendMetrics(registry)
    written = [contract.COLL_READINGS, contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS]
    for coll in [*written, readings_store.MARKS]:
        assert registry.get_sample_value("iot_backend_mongo_write_seconds_count", {"collection": coll}) == 0
    for coll in written:
        assert registry.get_sample_value("iot_backend_mongo_read_seconds_count", {"collection": coll}) == 0

"""Prometheus metrics of the backend. Names are part of what Grafana dashboards and alert rules query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from backend.errors import ConfigError
from backend.records import SENSOR
from iot import contract, readings_store

# The collections the backend writes (backend/mongo_sink.py), and those it reads: their latency series
# exist from the start, so a burst between two scrapes shows as a rise (a series born with its first
# observation has no earlier sample to rise from, and a panel showed no latency for it).
WRITTEN = (
    contract.COLL_READINGS,
    contract.COLL_SENSOR_WINDOWS,
    contract.COLL_PLACE_WINDOWS,
    readings_store.MARKS,
)
READ = (contract.COLL_READINGS, contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS)
MONGO_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BackendMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.readings = Counter(
            "iot_backend_readings_total",
            "Valid readings processed (duplicates included)",
            ["scope"],
            registry=r,
        )
        self.duplicates = Counter(
            "iot_backend_duplicates_total",
            "Readings dropped as (device, boot, seq) duplicates",
            ["scope"],
            registry=r,
        )
        self.late = Counter(
            "iot_backend_late_total",
            "Readings not counted: window final and further behind than the allowed lateness (sent to DLQ)",
            ["scope"],
            registry=r,
        )
        self.amended = Counter(
            "iot_backend_windows_amended_total",
            "Final window documents amended (or created) by readings within the allowed lateness",
            ["scope", "place"],
            registry=r,
        )
        self.amended_readings = Counter(
            "iot_backend_amended_readings_total",
            "Readings counted into windows already final (within the allowed lateness)",
            ["scope"],
            registry=r,
        )
        self.rejected = Counter(
            "iot_backend_rejected_total",
            "Records and stored documents sent to the DLQ by reason (not a valid reading, a conflicting "
            "duplicate, a corrupt window document, ...)",
            ["reason"],
            registry=r,
        )
        self.lookups = Counter(
            "iot_backend_dedup_lookups_total",
            "Readings the de-duplication asked MongoDB about (its bounded memory forgot them)",
            ["scope"],
            registry=r,
        )
        self.rebuilt = Counter(
            "iot_backend_windows_rebuilt_total",
            "Window documents found corrupt and rebuilt from the stored readings",
            ["scope"],
            registry=r,
        )
        self.batch_failures = Counter(
            "iot_backend_batch_failures_total",
            "Batches that failed as a whole (a bug) and were retried; their offsets wait meanwhile",
            ["scope"],
            registry=r,
        )
        self.finalized = Counter(
            "iot_backend_windows_finalized_total", "Windows that became final", ["scope", "kind"], registry=r
        )
        self.mongo_write = Histogram(
            "iot_backend_mongo_write_seconds",
            "Duration of one bulk write to MongoDB",
            ["collection"],
            buckets=MONGO_BUCKETS,
            registry=r,
        )
        self.mongo_read = Histogram(
            "iot_backend_mongo_read_seconds",
            "Duration of one look-up in MongoDB (is a window final, the de-duplication's stored readings)",
            ["collection"],
            buckets=MONGO_BUCKETS,
            registry=r,
        )
        for coll in WRITTEN:
            self.mongo_write.labels(coll)
        for coll in READ:
            self.mongo_read.labels(coll)
        self.lag = Gauge(
            "iot_backend_consumer_lag",
            "Messages behind the partition's high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalance_seconds = Gauge(
            "iot_backend_rebalance_seconds",
            "How long the worker's current Kafka rebalance has lasted; 0 when none (backend/watchdog.py)",
            registry=r,
        )
        self.commit_wait_seconds = Gauge(
            "iot_backend_commit_wait_seconds",
            "How long the worker's oldest pending offset commit has waited; 0 when none "
            "(backend/watchdog.py)",
            registry=r,
        )
        self.stalls = Counter(
            "iot_backend_stalls_total",
            "Rebalances or offset commits that outlasted IOT_BACKEND_STALL_S; the worker exits after "
            "each for its supervisor to restart it",
            ["wait"],
            registry=r,
        )
        self.open_write_interval = Gauge(
            "iot_backend_open_write_interval_seconds",
            "How often each key's open windows are rewritten now (IOT_BACKEND_OPEN_WRITE_S, or longer "
            "when the rewrites cost more than their share of the worker's time)",
            registry=r,
        )
        self.sensor_mean = Gauge(
            "iot_backend_sensor_window_mean",
            "Mean of the latest final window per sensor",
            ["device", "place", "metric", "window"],
            registry=r,
        )
        self.place_mean = Gauge(
            "iot_backend_place_window_mean",
            "Mean of the latest final window per place",
            ["place", "metric", "window"],
            registry=r,
        )

        # Per mean series: the start of the window it shows, so that the latest window wins whatever
        # order final and amended documents come in (an amendment of an older window must not show),
        # and its four gauges (`labels` validates and locks at every call: per final window document it
        # was ~3 % of the batch path's CPU, bench/batch_cpu.py).
        self._shown: dict[tuple[str, ...], tuple[int, tuple[Any, ...]]] = {}
        # Finalised windows counted per (scope, kind) child, for the same reason.
        self._finalized: dict[tuple[str, str], Any] = {}

    def show_window(self, scope: str, doc: Mapping[str, Any]) -> None:
        """Set the mean gauges from a final or amended window document if it is the latest window of
        its series: an amendment of the shown window moves the gauge to the amended mean."""
        window = f"{doc['kind']}_{doc['size_s']}s"
        owner = (doc["device"], doc["place"]) if scope == SENSOR else (doc["place"],)
        series = (scope, *owner, window)
        start = int(doc["start"])
        shown = self._shown.get(series)
        if shown is None:
            gauge = self.sensor_mean if scope == SENSOR else self.place_mean
            children = tuple(gauge.labels(*owner, metric, window) for metric in contract.METRICS)
        elif start < shown[0]:
            return
        else:
            children = shown[1]
        self._shown[series] = (start, children)
        for metric, child in zip(contract.METRICS, children, strict=True):
            mean = doc[metric]["mean"]
            if mean is not None:
                child.set(mean)

    def count_final(self, scope: str, docs: Sequence[Mapping[str, Any]]) -> None:
        """Count windows that became final (their documents) and show their means."""
        for doc in docs:
            key = (scope, doc["kind"])
            child = self._finalized.get(key)
            if child is None:
                child = self._finalized[key] = self.finalized.labels(scope, doc["kind"])
            child.inc()
            self.show_window(scope, doc)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        if port:
            try:
                start_http_server(port, addr=host, registry=self.registry)
            except OSError as exc:
                raise ConfigError(
                    "IOT_BACKEND_METRICS_PORT",
                    f"cannot serve metrics on {host}:{port} ({exc.strerror}); pick a free port",
                ) from None

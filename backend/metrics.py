"""Prometheus metrics of the backend. Names are part of what Grafana dashboards and alert rules query."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


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
            "Records on iot.readings that are not valid readings (sent to DLQ)",
            ["reason"],
            registry=r,
        )
        self.finalized = Counter(
            "iot_backend_windows_finalized_total", "Windows that became final", ["scope", "kind"], registry=r
        )
        self.mongo_write = Histogram(
            "iot_backend_mongo_write_seconds",
            "Duration of one bulk write to MongoDB",
            ["collection"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.lag = Gauge(
            "iot_backend_consumer_lag",
            "Messages behind the partition's high watermark",
            ["topic", "partition"],
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

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)

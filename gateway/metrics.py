"""Prometheus metrics of one gateway process, in a registry of its own.

Names are part of the product's interface: Grafana dashboards and alert rules query them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from iot import contract

from .devices import IGNORED_HEALTH, IGNORED_STATUS, DeviceBoard
from .errors import SettingsError

__all__ = ["IGNORED_RETAINED", "GatewayMetrics"]

# iot_gateway_ignored_total{kind="reading"}: a retained reading is a stale copy (see mqtt_source.py).
IGNORED_RETAINED = "retained"
RETAINED = (IGNORED_RETAINED,)

# Receive → Kafka-confirmed latency; acks=all on loopback is milliseconds, an outage is minutes.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("iot_gateway_received_total", "MQTT messages received", registry=r)
        self.produced = Counter(
            "iot_gateway_produced_total", "Valid readings confirmed by Kafka in iot.readings", registry=r
        )
        self.rejected = Counter(
            "iot_gateway_rejected_total",
            "Rejected messages confirmed by Kafka in the DLQ",
            ["reason"],
            registry=r,
        )
        self.acked = Counter(
            "iot_gateway_acked_total",
            "MQTT messages acknowledged to the broker after Kafka confirmed",
            registry=r,
        )
        self.e2e_acks = Counter(
            "iot_gateway_e2e_acks_total",
            "End-to-end ack messages published to boards (sensors/{place}/{device}/ack)",
            registry=r,
        )
        self.e2e_acks_unsent = Counter(
            "iot_gateway_e2e_acks_unsent_total",
            "End-to-end ack messages not sent (MQTT disconnected); the boards re-send",
            registry=r,
        )
        # The service points it at the bridge's count with set_function.
        self.in_flight = Gauge(
            "iot_gateway_in_flight", "Messages received and not yet confirmed by Kafka", registry=r
        )
        self.in_flight_peak = Gauge(
            "iot_gateway_in_flight_peak",
            "Most messages ever in flight at once since the process started (bounded by "
            "IOT_GATEWAY_MAX_IN_FLIGHT)",
            registry=r,
        )
        self.latency = Histogram(
            "iot_gateway_produce_latency_seconds",
            "Time from MQTT receive to Kafka delivery confirmation",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kafka_errors = Counter(
            "iot_gateway_kafka_errors_total", "Kafka client and delivery errors", ["error"], registry=r
        )
        self.kafka_up = Gauge(
            "iot_gateway_kafka_up", "1 while the Kafka cluster is reachable, 0 after it was lost", registry=r
        )
        self.mqtt_connected = Gauge(
            "iot_gateway_mqtt_connected", "1 while connected and subscribed to the broker", registry=r
        )
        self.clock_ahead = Counter(
            "iot_gateway_clock_ahead_total",
            "Readings re-stamped with the receive time: the board's ts was more than"
            " IOT_MAX_CLOCK_AHEAD_S ahead of it (its claim kept in device_ts)",
            ["place", "device"],
            registry=r,
        )
        self.ignored = Counter(
            "iot_gateway_ignored_total",
            "MQTT messages neither bridged nor dead-lettered: status and health messages the gateway"
            " cannot use, and retained readings (stale copies the broker sends again at every subscribe)",
            ["kind", "reason"],
            registry=r,
        )
        self.callback_errors = Counter(
            "iot_gateway_callback_errors_total",
            "Exceptions caught in the MQTT client's callbacks (the gateway's own bug: please report)",
            ["callback"],
            registry=r,
        )
        self.mqtt_connect_failures = Counter(
            "iot_gateway_mqtt_connect_failures_total",
            "Connection attempts to the MQTT broker that failed (unreachable, refused, TLS)",
            registry=r,
        )
        self.mqtt_properties_dropped = Counter(
            "iot_gateway_mqtt_properties_dropped_total",
            "Messages whose MQTT v5 properties the client could not parse; handled without them",
            registry=r,
        )
        self.devices = DeviceBoard()
        r.register(self.devices)
        # Every reason exists from the start, so a dashboard shows 0 rather than no data.
        for reason in contract.DLQ_REASONS:
            self.rejected.labels(reason=reason)
        for kind, reasons in (("status", IGNORED_STATUS), ("health", IGNORED_HEALTH), ("reading", RETAINED)):
            for reason in reasons:
                self.ignored.labels(kind=kind, reason=reason)
        self.kafka_up.set(1)

    def restamped(self, reading_topic: str) -> None:
        """Count a re-stamped reading (`reading_topic`'s ids are already validated)."""
        parts = reading_topic.split("/")
        self.clock_ahead.labels(place=parts[1], device=parts[2]).inc()

    def serve(self, host: str, port: int) -> None:
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise SettingsError(
                "IOT_GATEWAY_METRICS_PORT",
                f"cannot serve metrics on {host}:{port} ({exc.strerror}); pick a free port",
            ) from None

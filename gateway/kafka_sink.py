"""The Kafka side: an idempotent acks=all producer and what it tells about the cluster's health.

Delivery callbacks run in whichever thread calls `poll`/`flush` (the service's main thread). The
sink tracks reachability from the client's error callback and from deliveries, so the service can
log the moment Kafka is lost and the moment it is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from iot import log

from .errors import KafkaFatalError
from .metrics import GatewayMetrics
from .records import Outgoing

__all__ = ["GATEWAY_HEADER", "DeliveryCallback", "KafkaSink"]

GATEWAY_HEADER = "iot-gateway"

DeliveryCallback = Callable[[Any, Any], None]

_log = log.get("gateway.kafka")


class KafkaSink:
    def __init__(self, config: dict[str, str | int | bool], metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._bootstrap = str(config.get("bootstrap.servers", ""))
        # Provenance: which gateway bridged a record (debugging duplicates, tests telling gateways apart).
        self._headers: list[tuple[str, str | bytes | None]] = [
            (GATEWAY_HEADER, str(config.get("client.id", "")).encode("utf-8"))
        ]
        self._fatal: str | None = None
        self._reachable = True
        self._lock = threading.Lock()
        try:
            self._producer = Producer(
                {**config, "error_cb": self._on_client_error}, logger=_librdkafka_logger()
            )
        except KafkaException as exc:
            raise KafkaFatalError(f"Kafka producer configuration rejected: {exc}") from None

    def send(self, out: Outgoing, on_delivery: DeliveryCallback) -> None:
        """Queue one record; raises BufferError when the local queue is full (caller retries)."""
        self._producer.produce(out.topic, out.value, out.key, on_delivery=on_delivery, headers=self._headers)

    def poll(self, timeout: float) -> int:
        """Serve delivery callbacks; raises KafkaFatalError once the producer cannot go on."""
        served: int = self._producer.poll(timeout)
        if self._fatal is not None:
            raise KafkaFatalError(self._fatal)
        return served

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for queued records; returns how many are still undelivered."""
        left: int = self._producer.flush(timeout)
        return left

    @property
    def reachable(self) -> bool:
        """False from the client's all-brokers-down error until the next successful delivery."""
        return self._reachable

    def delivered_ok(self) -> None:
        """A delivery succeeded: the cluster is reachable (again)."""
        if not self._reachable:
            with self._lock:
                if not self._reachable:
                    self._reachable = True
                    self._metrics.kafka_up.set(1)
                    _log.info(
                        "kafka_reachable", bootstrap=self._bootstrap, action="resuming deliveries and acks"
                    )

    def delivery_failed(self, err: Any) -> None:
        self._metrics.kafka_errors.labels(error=_error_name(err)).inc()
        if err.fatal():
            self._fatal = f"fatal Kafka delivery error {err.name()}: {err.str()}"

    def _on_client_error(self, err: KafkaError) -> None:
        name = _error_name(err)
        self._metrics.kafka_errors.labels(error=name).inc()
        if err.fatal():
            self._fatal = f"fatal Kafka error {name}: {err.str()}"
            _log.error(
                "kafka_fatal", error=name, detail=err.str(), action="exiting; un-acked readings stay in MQTT"
            )
            return
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                was = self._reachable
                self._reachable = False
            self._metrics.kafka_up.set(0)
            if was:
                _log.error(
                    "kafka_unreachable",
                    bootstrap=self._bootstrap,
                    detail=err.str(),
                    action="holding readings un-acked (the broker queues the rest); resumes by itself",
                )
            return
        if not self._reachable and err.code() == KafkaError._TRANSPORT:
            # Each reconnect attempt reports again; kafka_unreachable already said what matters.
            _log.debug("kafka_client_error", error=name, detail=err.str())
            return
        _log.warning("kafka_client_error", error=name, detail=err.str())


def _librdkafka_logger() -> logging.Logger:
    # librdkafka's own lines repeat what the error callback reports as structured events; keep
    # them for debugging only.
    logger = logging.getLogger("gateway.librdkafka")
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.CRITICAL)
    return logger


def _error_name(err: Any) -> str:
    try:
        return str(err.name()).lstrip("_").lower() or "unknown"
    except (AttributeError, TypeError):
        return "unknown"

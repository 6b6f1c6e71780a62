"""What the backend produces to Kafka besides Faust's changelogs: final windows, DLQ records and the
place repartition, through one librdkafka producer flushed before a batch is acknowledged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from iot import contract, log
from iot.kafka import KafkaConnection
from iot.reach import KafkaClientLog

from .errors import SinkError
from .records import SENSOR

FLUSH_LOG_S = 5.0
_log = log.get("backend.kafka")


class KafkaSink:
    def __init__(self, conn: KafkaConnection) -> None:
        self._producer = Producer(
            {**conn.librdkafka(), "enable.idempotence": True, "linger.ms": 5},
            # librdkafka's own lines (one per reconnect) at DEBUG, never raw on stderr.
            logger=KafkaClientLog("backend"),
        )
        self._errors: list[str] = []
        self._bootstrap = conn.bootstrap

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def _send(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        # -1: librdkafka's "unassigned", the key's partition by the partitioner.
        where = -1 if partition is None else partition
        while True:
            try:
                self._producer.produce(topic, value, key.encode(), where, on_delivery=self._on_delivery)
                return
            except BufferError:
                # The local queue is full: let librdkafka deliver some, then retry the same message.
                self._producer.poll(0.1)

    def window(self, scope: str, doc: Mapping[str, Any]) -> None:
        if scope == SENSOR:
            self._send(contract.TOPIC_WINDOWS_SENSOR, doc["device"], contract.encode(doc))
        else:
            self._send(contract.TOPIC_WINDOWS_PLACE, doc["place"], contract.encode(doc))

    def dlq(self, record: Mapping[str, Any]) -> None:
        self._send(contract.TOPIC_DLQ, record["topic"], contract.encode(record))

    def forward(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        """A record of the place repartition topic: by its key's partition, or the one given."""
        self._send(topic, key, value, partition)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything produced so far is acknowledged; raise if anything failed. While Kafka
        does not take it, say so every FLUSH_LOG_S (the caller retries after `timeout`)."""
        waited, left = 0.0, 0
        while waited < timeout:
            step = min(FLUSH_LOG_S, timeout - waited)
            left = self._producer.flush(step)
            waited += step
            if not left:
                break
            _log.error(
                "kafka_unreachable",
                address=self._bootstrap,
                undelivered=left,
                waited_s=round(waited, 1),
                action="check that Kafka runs there (`iot stack status`); the batch waits, nothing is lost",
            )
        errors, self._errors = self._errors, []
        if left:
            raise SinkError(f"{left} Kafka message(s) undelivered after {timeout:.0f}s; is Kafka up?")
        if errors:
            raise SinkError(f"Kafka delivery failed: {errors[:3]}")

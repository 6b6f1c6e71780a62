"""Where a Kafka topic ends, and a consumer group that starts there: on the shared stack topics hold
other runs' history, which a test, a benchmark or a rig run must not replay."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, TopicPartition

from iot.kafka import KafkaConnection

__all__ = ["commit_end_offsets", "end_offsets"]


def end_offsets(consumer: Any, topic: str, timeout: float = 10.0) -> list[TopicPartition]:
    """Each partition of `topic` at its current end (high watermark), read with `consumer`."""
    partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
    return [
        TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1])
        for p in partitions
    ]


def commit_end_offsets(kafka: KafkaConnection | str, group: str, topic: str) -> None:
    """Commit a topic's current end offsets for a new consumer group, so a consumer joining it starts
    exactly here. A bare bootstrap string means a PLAINTEXT connection."""
    conn = KafkaConnection(kafka) if isinstance(kafka, str) else kafka
    consumer = Consumer({**conn.librdkafka(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=end_offsets(consumer, topic), asynchronous=False)
    finally:
        consumer.close()

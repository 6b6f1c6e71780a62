"""Kafka topics of the contract, created with the partition counts this deployment uses.

Partitions are a deployment choice, not part of the wire contract: readings are keyed by device, so
their partition count bounds how many gateway producers and backend workers share the load.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from iot import contract, log
from iot.errors import IotError

TOPIC_PARTITIONS: Mapping[str, int] = {
    contract.TOPIC_READINGS: 6,
    contract.TOPIC_DLQ: 1,
    contract.TOPIC_WINDOWS_SENSOR: 3,
    contract.TOPIC_WINDOWS_PLACE: 3,
}

_log = log.get("iot.topics")


class TopicError(IotError):
    """A contract topic could not be created or checked."""


def ensure_topics(
    bootstrap: str,
    timeout: float = 30.0,
    replication: int = 1,
    client_config: Mapping[str, str | int | float | bool] | None = None,
    answer_timeout: float | None = None,
) -> list[str]:
    """Create the contract topics that do not exist yet; return the names created. Idempotent.

    `client_config` carries security settings (SASL/SSL) of the caller's Kafka clients.
    `answer_timeout` (default `timeout`) bounds the first question, so a Kafka that is not there is
    reported within it, while creating topics may take `timeout`.
    """
    answer_timeout = timeout if answer_timeout is None else answer_timeout
    config: dict[str, str | int | float | bool] = {**(client_config or {}), "bootstrap.servers": bootstrap}
    # librdkafka would print raw connection errors to stderr while the broker is away; the caller
    # reports a failure through TopicError instead.
    config.setdefault("log_level", 0)
    admin = AdminClient(config)
    try:
        existing = set(admin.list_topics(timeout=answer_timeout).topics)
    except KafkaException as exc:
        raise TopicError(f"Kafka at {bootstrap} did not answer in {answer_timeout:.0f}s: {exc}") from exc
    wanted = [
        NewTopic(name, num_partitions=parts, replication_factor=replication)
        for name, parts in TOPIC_PARTITIONS.items()
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except Exception as exc:
            # Another process may have created it between our list and create: that is success.
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                continue
            raise TopicError(f"creating topic {name} on {bootstrap} failed: {exc}") from exc
    _log.info("topics_created", topics=",".join(created), bootstrap=bootstrap)
    return created

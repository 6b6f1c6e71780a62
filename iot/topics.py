"""Kafka topics of the contract, created with the partition counts this deployment uses.

Partitions are a deployment choice, not part of the wire contract: readings are keyed by device, so
their partition count bounds how many gateway producers and backend workers share the load.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka.admin import AdminClient, NewTopic

from iot import contract, log

TOPIC_PARTITIONS: Mapping[str, int] = {
    contract.TOPIC_READINGS: 6,
    contract.TOPIC_DLQ: 1,
    contract.TOPIC_WINDOWS_SENSOR: 3,
    contract.TOPIC_WINDOWS_PLACE: 3,
}

_log = log.get("iot.topics")


class TopicError(RuntimeError):
    """A contract topic could not be created or checked."""


def ensure_topics(bootstrap: str, timeout: float = 30.0, replication: int = 1) -> list[str]:
    """Create the contract topics that do not exist yet; return the names created. Idempotent."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
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

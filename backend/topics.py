"""Every Kafka topic a backend worker subscribes to exists, and is in the cluster metadata, before Faust
starts: Faust's partition assignment is only as complete as the leader's metadata.

Left to itself, Faust creates its table changelogs (and its leader topic) at start, tens of
milliseconds before its consumer subscribes. A broker's metadata cache trails a CreateTopics answer
(KRaft applies the new topic asynchronously), so the consumer's first metadata can lack a changelog
(aiokafka: "Topic ...-place-state-changelog not found in cluster metadata"), and aiokafka fetches it
again only after `metadata_max_age_ms` (5 minutes). Until then the group leader assigns without that
changelog ("Ignoring missing topic"), so when a partition moves to another worker (a worker joins or
dies) the table's state for it is not restored: the new owner counts its windows from an empty state
from the committed offset on and overwrites the stored windows, whose earlier readings are lost for
good. Seen in CI: the join + kill test's place windows stayed short. With an emulated lag of the
place-state changelog, 180 of 1,440 place readings (the first four repartition records, consumed and
committed by the first worker) were missing from every run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from faust.assignor.leader_assignor import LeaderAssignor
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.times import want_seconds

from iot import pins

from .errors import SinkError

# Faust's own topic settings for the topics it would create (so ours are the ones it would make).
pins.require(
    "faust-streaming",
    "0.15",
    [(LeaderAssignor, "_leader_topic"), (faust_aiokafka.Transport, "_topic_config")],
    "backend/topics.py",
)

POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


def faust_topics(app: Any) -> list[TopicSpec]:
    """The topics Faust would create for `app` at start: each table's changelog and the leader topic,
    with the partitions and configuration (compaction, retention) Faust gives them."""
    topics = [table.changelog_topic for table in app.tables.values()]
    topics.append(app._leader_assignor._leader_topic)
    specs: list[TopicSpec] = []
    for topic in topics:
        retention = topic.retention
        config = app.transport._topic_config(
            int(want_seconds(retention) * 1000) if retention else None, topic.compacting, topic.deleting
        )
        config.update(topic.config or {})
        partitions = topic.partitions or app.conf.topic_partitions
        specs.extend(
            TopicSpec(name, partitions, {k: str(v) for k, v in config.items()}) for name in topic.topics
        )
    return specs


def ensure_visible(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet and return once the metadata shows each of them with
    all its partitions led; raises SinkError after `timeout` seconds."""
    wanted = {s.name: s for s in specs}
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        existing = admin.list_topics(timeout=timeout).topics
        new = [s for s in wanted.values() if s.name not in existing]
        if new:
            topics = [NewTopic(s.name, s.partitions, 1, config=dict(s.config)) for s in new]
            for name, fut in admin.create_topics(topics, request_timeout=timeout).items():
                try:
                    fut.result(timeout=timeout)
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another worker's start made it: fine
                        raise SinkError(f"creating topic {name} failed: {exc}") from exc
        # A topic that existed keeps its partition count (a source topic of the operator's); one made
        # here must show all of its partitions.
        need = {s.name: s.partitions if s in new else 1 for s in wanted.values()}
        deadline = time.monotonic() + timeout
        while True:
            meta = admin.list_topics(timeout=timeout).topics
            pending = [name for name in wanted if not _complete(meta.get(name), need[name])]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise SinkError(
                    f"topics not in the Kafka metadata after {timeout:.0f}s: {', '.join(pending)}"
                )
            time.sleep(POLL_S)  # polling the metadata against a deadline, not a synchronisation sleep
    except KafkaException as exc:
        raise SinkError(f"Kafka at {bootstrap} did not answer: {exc}") from exc


def _complete(meta: Any, partitions: int) -> bool:
    """A topic's metadata holds at least `partitions` partitions, each with a leader (what Faust's
    assignor counts)."""
    if meta is None or meta.error is not None or not meta.partitions or len(meta.partitions) < partitions:
        return False
    return all(p.error is None and p.leader >= 0 for p in meta.partitions.values())

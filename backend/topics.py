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

from typing import Any

from faust.assignor.leader_assignor import LeaderAssignor
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.times import want_seconds

from iot import pins
from iot.topics import TopicSpec

# Faust's own topic settings for the topics it would create (so ours are the ones it would make).
pins.require(
    "faust-streaming",
    "0.15",
    [(LeaderAssignor, "_leader_topic"), (faust_aiokafka.Transport, "_topic_config")],
    "backend/topics.py",
)


def faust_topics(app: Any) -> list[TopicSpec]:
    """The topics Faust would create for `app` at start: each table's changelog and the leader topic,
    with the partitions and configuration (compaction, retention) Faust gives them. The changelogs
    are co-partitioned with the tables, so an existing one must have exactly that many partitions.
    They are made (and waited for) by iot.topics.TopicAdmin with `wait_visible`."""
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
            TopicSpec(name, partitions, {k: str(v) for k, v in config.items()}, exact_partitions=True)
            for name in topic.topics
        )
    return specs

"""Faust's aiokafka transport with one correction: seeking to the committed offsets also rewinds the
partitions that have no committed offset yet.

Why: during a rebalance Faust stops the flow and pauses every partition, which empties the set of
active partitions its fetcher passes to aiokafka. A fetch already in flight then gets that empty set,
which aiokafka reads as "all partitions": it hands over (and moves its position past) records of the
source partitions, and Faust drops them because the flow is stopped, relying on the seek to committed
offsets that ends table recovery to fetch them again. aiokafka's `seek_to_committed` only seeks
partitions whose committed offset is > 0, so a partition nothing was committed on yet (a new consumer
group, or a worker killed before its first commit) stays past the dropped records: they are lost. This
is what lost a worker's readings when a second worker joined while readings were being produced.

The fix gives those partitions (table changelogs aside) what Kafka gives a consumer without a committed
offset: the position of the group's auto.offset.reset policy (earliest → log start, latest → end).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiokafka
from faust.tables.base import Collection
from faust.transport.drivers import aiokafka as faust_aiokafka

from iot import pins

# The Faust internals the backend relies on: this transport's overrides, and the tables' in-memory
# `data` and `send_changelog` that backend/app.py uses to keep one KeyState per key.
pins.require(
    "faust-streaming",
    "0.15",
    [
        (faust_aiokafka.AIOKafkaConsumerThread, "seek_to_committed"),
        (faust_aiokafka.AIOKafkaConsumerThread, "call_thread"),
        (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer"),
        (faust_aiokafka.Consumer, "_new_consumer_thread"),
        (Collection, "data"),
        (Collection, "send_changelog"),
    ],
    "backend/transport.py and backend/app.py",
)
# What the corrected seek calls on aiokafka's consumer (whose 0-offset skip it works around).
pins.require(
    "aiokafka",
    "0.14",
    [(aiokafka.AIOKafkaConsumer, name) for name in ("seek_to_committed", "seek_to_beginning", "seek_to_end")],
    "backend/transport.py",
)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[Any, int]:
        return await self.call_thread(self._seek_to_committed_or_reset)  # type: ignore[no-any-return]

    async def _seek_to_committed_or_reset(self) -> Mapping[Any, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[Any, int | None] = await consumer.seek_to_committed()
        # Table changelogs are positioned by Faust's recovery itself, never by committed offsets.
        changelogs = self.app.tables.changelog_topics
        uncommitted = [
            tp
            for tp, offset in committed.items()
            if (offset is None or offset < 0) and tp.topic not in changelogs
        ]
        for tp, offset in committed.items():
            if offset == 0:  # a committed 0 is a position too; aiokafka skips it
                consumer.seek(tp, 0)
        if uncommitted:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                await consumer.seek_to_end(*uncommitted)
            else:
                await consumer.seek_to_beginning(*uncommitted)
        return committed  # type: ignore[return-value]


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def install(app: Any) -> None:
    """Make `app` use this transport; call before anything touches `app.transport`."""
    app.transport = Transport(app.conf.broker_consumer, app)

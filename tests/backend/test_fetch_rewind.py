"""backend/transport.py's correction 5: what a fetch brings back after a rebalance stopped the flow is
sought back, not consumed. Faust drops such records unread; when they were a table changelog's, sought
by recovery just before the fetch returned, recovery waited for ever for events that were never
fetched again (a worker stuck in its rebalance after a join or a death: test_recovery's join tests,
about 1 run in 20 under load, "No event received for active tp" in the stuck worker's log).

The race is played on the consumer thread's real fetch, against the stack's Kafka: the fetch starts
while the flow is active (Faust's own check passes) and returns after the flow stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from backend import transport
from tests.support import unique

from .conftest import KAFKA

pytestmark = pytest.mark.integration


async def _until(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def _partition() -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaProducer, TopicPartition]]:
    """A new one-partition topic, a consumer assigned to it at its beginning, and a producer."""
    topic = unique("fetch-rewind")
    admin = AdminClient({"bootstrap.servers": KAFKA})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await consumer.start()
    await producer.start()
    try:

        async def known() -> bool:
            return topic in await consumer.topics()

        await _until(known, f"{topic} in Kafka's metadata")
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        yield consumer, producer, tp
    finally:
        await producer.stop()
        await consumer.stop()


async def _produce(producer: AIOKafkaProducer, tp: TopicPartition, n: int) -> None:
    for i in range(n):
        await producer.send(tp.topic, b"r%d" % i, partition=tp.partition)
    await producer.flush()


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, n: int) -> list[int]:
    """The offsets the consumer reads next, until it has `n` (fetches may bring fewer at a time)."""
    offsets: list[int] = []
    deadline = asyncio.get_running_loop().time() + 15
    while len(offsets) < n and asyncio.get_running_loop().time() < deadline:
        got = await consumer.getmany(tp, timeout_ms=1000)
        offsets += [r.offset for r in got.get(tp, [])]
    return offsets


def _fetch(consumer: AIOKafkaConsumer, flow: SimpleNamespace, active: set[Any]) -> Any:
    """The consumer thread's fetch (it reads one thing of Faust's consumer: whether the flow is on)."""
    thread = object.__new__(transport._ConsumerThread)
    thread.consumer = cast(Any, flow)
    return thread._fetch_records(consumer, active, timeout=10.0, max_records=100)


def test_records_fetched_after_the_flow_stopped_are_not_consumed() -> None:
    async def go() -> tuple[dict[Any, Any], int, list[int]]:
        async with _partition() as (consumer, producer, tp):
            flow = SimpleNamespace(flow_active=True)
            fetch = asyncio.ensure_future(_fetch(consumer, flow, {tp}))

            async def fetch_waits() -> bool:
                return bool(consumer._fetcher._fetch_waiters)

            await _until(fetch_waits, "the fetch to wait for records")
            flow.flow_active = False  # a revocation stops the flow while the fetch waits
            await _produce(producer, tp, 3)
            handed = dict(await fetch)
            position = await consumer.position(tp)
            return handed, position, await _read(consumer, tp, 3)

    handed, position, next_offsets = asyncio.run(go())
    assert handed == {}  # Faust drops them unread
    assert position == 0  # so Kafka keeps them: the position is where the fetch started
    assert next_offsets == [0, 1, 2]  # and the next fetch (recovery's, after its seek) gets them


def test_records_of_a_partition_no_longer_active_are_not_consumed() -> None:
    async def go() -> tuple[dict[Any, Any], int]:
        async with _partition() as (consumer, producer, tp):
            await _produce(producer, tp, 2)
            # The flow is on, but Faust's set of active partitions (passed by reference) was emptied
            # by a revocation: an empty set, which aiokafka reads as "every partition".
            handed = dict(await _fetch(consumer, SimpleNamespace(flow_active=True), set()))
            return handed, await consumer.position(tp)

    handed, position = asyncio.run(go())
    assert handed == {}
    assert position == 0


def test_records_of_active_partitions_with_the_flow_on_are_handed_over() -> None:
    async def go() -> tuple[list[int], int]:
        async with _partition() as (consumer, producer, tp):
            await _produce(producer, tp, 2)
            handed = await _fetch(consumer, SimpleNamespace(flow_active=True), {tp})
            return [r.offset for r in handed.get(tp, [])], await consumer.position(tp)

    offsets, position = asyncio.run(go())
    assert offsets and offsets == list(range(len(offsets)))  # from the start, in order
    assert position == len(offsets)  # consumed: the position moved past what was handed over

"""The batch path's queue (backend/transport.py): lists in from the fetch loop, batches out to an agent,
back-pressure by a soft limit, and emptied where Faust empties its streams' queues."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from backend import transport
from backend.transport import BatchQueue

pytestmark = pytest.mark.unit


class _Record:
    """Stands in for a ConsumerMessage in Faust's unacked set (a WeakSet: it must take weak refs)."""


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_get_returns_queued_records_in_order_up_to_the_batch_size_splitting_a_list() -> None:
    async def go() -> tuple[list[int], list[int], int]:
        q = BatchQueue(limit=100)
        q.put([1, 2, 3])
        q.put([4, 5, 6, 7])
        first = await q.get(5, 0)
        rest = await q.get(5, 0)
        return first, rest, len(q)

    assert run(go()) == ([1, 2, 3, 4, 5], [6, 7], 0)


def test_get_waits_within_for_the_batch_to_fill_then_returns_what_came() -> None:
    async def go() -> tuple[list[int], float]:
        q = BatchQueue(limit=100)
        loop = asyncio.get_running_loop()
        q.put([1])
        loop.call_later(0.05, q.put, [2, 3])
        start = loop.time()
        got = await q.get(10, 0.3)
        return got, loop.time() - start

    got, waited = run(go())  # type: ignore[misc]
    assert got == [1, 2, 3]
    assert waited >= 0.25  # it waited out `within`, since 10 records never came


def test_get_returns_at_once_when_the_batch_is_full() -> None:
    async def go() -> tuple[list[int], float]:
        q = BatchQueue(limit=100)
        loop = asyncio.get_running_loop()
        q.put(list(range(10)))
        start = loop.time()
        got = await q.get(10, 5.0)
        return got, loop.time() - start

    got, waited = run(go())  # type: ignore[misc]
    assert got == list(range(10))
    assert waited < 1.0


def test_room_closes_at_the_limit_and_opens_when_an_agent_takes_records() -> None:
    async def go() -> list[bool]:
        q = BatchQueue(limit=4)
        seen = [q.room.is_set()]
        q.put([1, 2, 3, 4])
        seen.append(q.room.is_set())
        await q.get(2, 0)
        seen.append(q.room.is_set())
        return seen

    assert run(go()) == [True, False, True]


def test_faust_resuming_the_flow_empties_the_queue_and_opens_room() -> None:
    async def go() -> tuple[int, bool]:
        app = faust.App("test-batch-queue", broker="kafka://127.0.0.1:1")
        transport.install(app)
        q = transport.batch_queue(app, "some-topic", limit=2)
        q.put([_Record(), _Record(), _Record()])
        app.flow_control.suspend()
        app.flow_control.resume()  # what Faust does after a rebalance's seek
        return len(q), q.room.is_set()

    assert run(go()) == (0, True)


def test_records_a_revocation_clears_are_no_longer_awaited_as_unacked() -> None:
    # Faust's revocation clears the queues, then waits until the consumer's unacked set is empty. The
    # fetch loop still held its last round (`held`), so the cleared records never went away by
    # themselves and the revocation waited for good (the short soak's stall after its Kafka kill).
    async def go() -> tuple[int, int]:
        app = faust.App("test-batch-queue-drop", broker="kafka://127.0.0.1:1")
        transport.install(app)
        q = transport.batch_queue(app, "some-topic", limit=100)
        held = [_Record() for _ in range(3)]
        kept = _Record()  # taken by the agent before the clear: still awaited until acked
        unacked = app.consumer._unacked_messages
        for record in (*held, kept):
            unacked.add(record)
        q.put([kept])
        assert await q.get(1, 0) == [kept]
        q.put(held)
        app.flow_control.clear()  # what Faust's on_partitions_revoked does
        return len(q), len(unacked)

    assert run(go()) == (0, 1)


def test_a_weighed_queue_batches_and_limits_by_weight_taking_at_least_one_record() -> None:
    # The place topic's records are bundles of up to 1,000 readings: counted as records, 150 of them
    # made a 30k-reading batch. Weighed, a batch stops at the weight asked for.
    async def go() -> tuple[list[bytes], list[bytes], list[bytes], bool, bool, int]:
        q = BatchQueue(limit=1000, weigh=len)
        q.put([b"a" * 300, b"b" * 300])
        q.put([b"c" * 300, b"d" * 900])
        full = q.room.is_set()
        first = await q.get(700, 0)  # 300 + 300; the third would make 900
        second = await q.get(700, 0)  # 300; the next weighs 900
        third = await q.get(700, 0)  # heavier than a batch on its own: taken alone
        return first, second, third, full, q.room.is_set(), len(q)

    first, second, third, full, room, left = run(go())  # type: ignore[misc]
    assert [len(r) for r in first] == [300, 300]
    assert [len(r) for r in second] == [300]
    assert [len(r) for r in third] == [900]
    assert not full  # 1,800 queued against a limit of 1,000
    assert room and left == 0


def test_a_weighed_queue_fills_its_batch_across_lists_and_keeps_the_rest_in_order() -> None:
    async def go() -> tuple[list[bytes], list[bytes], int]:
        q = BatchQueue(limit=10_000, weigh=len)
        q.put([b"1" * 10, b"2" * 10])
        q.put([b"3" * 10, b"4" * 10, b"5" * 10])
        got = await q.get(35, 0)
        return got, await q.get(100, 0), len(q)

    got, rest, left = run(go())  # type: ignore[misc]
    assert [r[:1] for r in got] == [b"1", b"2", b"3"]
    assert [r[:1] for r in rest] == [b"4", b"5"]
    assert left == 0


def test_the_worker_weighs_place_bundles_in_bytes_and_counts_readings_records() -> None:
    from backend.app import STREAM_BUFFER, BackendRuntime
    from backend.records import FORWARD_BYTES
    from backend.settings import load

    runtime = BackendRuntime(load({"IOT_BACKEND_APP_ID": "bk-queues", "IOT_BACKEND_BATCH_MAX": "300"}))
    queues = runtime.app.transport.batch_queues
    readings, place = queues["iot.readings"], queues["bk-queues-readings-by-place"]
    assert readings.weigh is None and readings.limit == 4 * 300
    assert place.limit == 4 * 300 * FORWARD_BYTES

    class Message:
        def __init__(self, value: bytes | None) -> None:
            self.value = value

    assert place.weigh is not None
    assert place.weigh(Message(b"x" * 5000)) == 5000
    assert place.weigh(Message(None)) == 1  # a record without a value still counts
    # Faust's stream queues (table recovery's changelog records) are not sized by the batch.
    assert runtime.app.conf.stream_buffer_maxsize == STREAM_BUFFER


def test_a_batch_taken_by_the_agent_tells_faust_its_partitions_delivered() -> None:
    """Faust's stalled-stream check logs "Stream has not started processing" for a partition with lag
    whose stream never delivered an event; the batch path bypasses the streams, so the agent stamps
    each partition of every batch it takes."""
    from types import SimpleNamespace

    from faust.types import TP

    from backend.app import BackendRuntime
    from backend.settings import load

    runtime = BackendRuntime(load({"IOT_BACKEND_APP_ID": "bk-inbound", "IOT_BACKEND_BATCH_MAX": "10"}))
    queue = runtime.app.transport.batch_queues["iot.readings"]
    agent = next(a for a in runtime.app.agents.values() if a.name.endswith("sensor-windows"))
    tps = [TP("iot.readings", p) for p in (1, 4)]
    taken: list[list[Any]] = []

    async def guarded(_scope: Any, messages: list[Any], _ack: Any) -> None:
        taken.append(messages)
        raise asyncio.CancelledError  # one batch is enough

    runtime.batches.guarded = guarded  # type: ignore[method-assign]
    inbound = runtime.app.monitor.stream_inbound_time
    assert not any(tp in inbound for tp in tps)

    async def run() -> None:
        queue.put([SimpleNamespace(tp=tps[i % 2], value=b"{}") for i in range(4)])
        with pytest.raises(asyncio.CancelledError):
            await agent.fun(None)

    asyncio.run(run())
    assert len(taken) == 1 and len(taken[0]) == 4
    assert all(tp in inbound for tp in tps)

"""A scope's next batch is computed while the batch before is written (backend/inflight.py), and that
keeps every guarantee: acks and changelog states only after the batch's writes, the states of that very
batch, reads of MongoDB after the writes before them, a rebalance after the writes in flight.

The in-memory batch path (tests/backend/memory.py) with a `readings` store whose writes wait on a gate:
a slow FerretDB, held as long as the test likes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest

from backend import retry, windows
from backend.engine import Item
from backend.records import SENSOR
from iot import contract

from .memory import MemorySink, Message, Pipeline

pytestmark = pytest.mark.unit
T0 = 1_750_000_000_000
DEADLINE_S = 10.0


class HeldSink(MemorySink):
    """MemorySink whose reading writes wait while `gate` is clear; it counts the reads that came while
    a write was held (each one could miss what that write brings) and can fail its next write."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.writing = 0
        self.reads = 0
        self.reads_during_write = 0
        self.fail_next = False

    def write_readings(self, items: Iterable[Item]) -> int:
        self.writing += 1
        try:
            if not self.gate.wait(DEADLINE_S):
                raise TimeoutError("the test never opened the gate")
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("a bug in a write")
            return super().write_readings(items)
        finally:
            self.writing -= 1

    def find_readings(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        self.reads += 1
        self.reads_during_write += self.writing > 0
        return super().find_readings(ids)


@pytest.fixture
def small_dedup_memory() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(windows, "MAX_BOOTS_PER_DEVICE", 2)
        yield


def reading(boot: int, seq: int) -> bytes:
    r = {
        "v": 1,
        "device": "d-a",
        "place": "p-1",
        "boot": boot,
        "seq": seq,
        "ts": T0 + boot * 1000 + seq,
        "time_valid": True,
        "temperature": 20.0 + seq,
        "humidity": 40.0,
        "pressure": 1000.25,
        "luminosity": 3.0,
        "fw": "f",
    }
    return contract.encode({**r, "received_at": r["ts"] + 5})


def produce(pipe: Pipeline, values: list[bytes]) -> list[Message]:
    return [pipe.produce(v, b"d-a") for v in values]


async def until(what: str, ok: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not ok():
        assert loop.time() < deadline, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 3 * DEADLINE_S))


class Agent:
    """The sensor agent's side: what it acked, in order, and how often the engine computed a batch."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.scope = pipe.batches.scopes[SENSOR]
        self.acked: list[list[int]] = []
        self.computed = 0
        process = self.scope.engine.process

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.computed += 1
            return process(*args, **kwargs)

        self.scope.engine.process = counting  # type: ignore[method-assign]

    def ack(self, messages: Any) -> None:
        self.acked.append([m.offset for m in messages])

    async def batch(self, messages: list[Message]) -> None:
        await self.pipe.batches.guarded(self.scope, messages, self.ack)


def test_the_next_batch_is_computed_while_one_is_written_and_acked_after_it_with_its_own_states() -> None:
    sink = HeldSink()
    pipe = Pipeline(sink=sink)
    agent = Agent(pipe)
    first, second = produce(pipe, [reading(0, s) for s in range(3)]), produce(pipe, [reading(0, 3)])
    changelog: list[dict[str, Any]] = []
    table = agent.scope.table
    send = table.send_changelog

    def recorded(partition: int, key: Any, value: Any) -> None:
        changelog.append(json.loads(json.dumps(value)))
        send(partition, key, value)

    table.send_changelog = recorded  # type: ignore[method-assign]

    async def test() -> None:
        sink.gate.clear()
        # Returns with the first batch's writes held (before: it returned only once they landed).
        await asyncio.wait_for(agent.batch(first), DEADLINE_S)
        later = asyncio.ensure_future(agent.batch(second))
        await until("the second batch computed while the first is written", lambda: agent.computed == 2)
        assert agent.acked == [] and changelog == [] and sink.readings == {}, "nothing before the writes"
        sink.gate.set()
        await later
        await pipe.batches.landings.drain()

    run(test)
    assert agent.acked == [[0, 1, 2], [3]]
    # The first state persisted is the first batch's (the engine's state had moved on meanwhile).
    assert [c["s"] for c in changelog] == [{"0": [[0, 2]]}, {"0": [[0, 3]]}]
    assert len(sink.readings) == 4


@pytest.mark.usefixtures("small_dedup_memory")
def test_a_lookup_waits_for_the_batch_in_flight_so_a_duplicate_of_it_is_not_counted_again() -> None:
    sink = HeldSink()
    pipe = Pipeline(sink=sink)
    agent = Agent(pipe)
    # Boots 0, 1, 2: with a memory of 2 boots, boot 0 is forgotten at once; a copy of (0, 0) from
    # another record (the gateway published it again) can only be told by the stored reading.
    first = produce(pipe, [reading(b, 0) for b in range(3)])
    copy = produce(pipe, [reading(0, 0)])

    async def test() -> None:
        sink.gate.clear()
        await agent.batch(first)
        later = asyncio.ensure_future(agent.batch(copy))
        await until("the copy computed", lambda: agent.computed >= 2)
        # A look-up that did not wait would be made now, in a thread: give it time to show.
        for _ in range(20):
            if sink.reads:
                break
            await asyncio.sleep(0.01)
        assert agent.acked == []
        sink.gate.set()
        await later
        await pipe.batches.landings.drain()

    run(test)
    assert sink.reads >= 1 and sink.reads_during_write == 0
    assert pipe.batches.metrics.duplicates.labels(SENSOR)._value.get() == 1
    assert len(sink.readings) == 3
    assert agent.acked == [[0, 1, 2], [3]]


def test_a_rebalance_waits_for_the_batch_in_flight_before_the_states_are_reloaded() -> None:
    sink = HeldSink()
    pipe = Pipeline(sink=sink)
    agent = Agent(pipe)
    first = produce(pipe, [reading(0, s) for s in range(3)])

    async def test() -> None:
        sink.gate.clear()
        await agent.batch(first)
        rebalanced = asyncio.ensure_future(pipe.batches.rebalanced())
        for _ in range(10):  # without a landing to wait for it ends at its first step
            await asyncio.sleep(0)
        assert not rebalanced.done(), "the rebalance went on with a batch's writes in flight"
        sink.gate.set()
        await asyncio.wait_for(rebalanced, DEADLINE_S)
        assert agent.acked == [[0, 1, 2]]
        assert json.loads(pipe.changelogs[SENSOR]["d-a"])["s"] == {"0": [[0, 2]]}

    run(test)


def test_a_failed_write_is_retried_and_the_next_batch_is_acked_only_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry, "FIRST_S", 0.01)
    sink = HeldSink()
    pipe = Pipeline(sink=sink)
    pipe.batches.lander.retry_landings = True  # as in the worker
    agent = Agent(pipe)
    first, second = produce(pipe, [reading(0, 0)]), produce(pipe, [reading(0, 1)])
    sink.fail_next = True

    async def test() -> None:
        await agent.batch(first)
        await agent.batch(second)
        await pipe.batches.landings.drain()

    run(test)
    assert pipe.batches.metrics.batch_failures.labels(SENSOR)._value.get() == 1
    assert agent.acked == [[0], [1]]
    assert len(sink.readings) == 2
    assert json.loads(pipe.changelogs[SENSOR]["d-a"])["s"] == {"0": [[0, 1]]}

"""Faust's aiokafka transport with four corrections to how Faust positions partitions around a
rebalance, and one to aiokafka's connections. The first two lost readings when a second worker joined,
or one died, while readings flowed; the third crashed a worker; the fourth stopped a worker for good
after a Kafka SIGKILL; the fifth left a worker in table recovery for good after a join or a death.
(A changelog missing from the leader's metadata is kept from happening before
Faust starts: topics.py.)

1. Seeking to the committed offsets also rewinds the partitions that have no committed offset yet.
   During a rebalance Faust stops the flow and pauses every partition, which empties the set of active
   partitions its fetcher passes to aiokafka. A fetch already in flight then gets that empty set, which
   aiokafka reads as "all partitions": it hands over (and moves its position past) records of the
   source partitions, and Faust drops them because the flow is stopped, relying on the seek to committed
   offsets that ends table recovery to fetch them again. aiokafka's `seek_to_committed` only seeks
   partitions whose committed offset is > 0, so a partition nothing was committed on yet (a new consumer
   group, or a worker killed before its first commit) stays past the dropped records: they are lost.
   Those partitions (table changelogs aside) get what Kafka gives a consumer without a committed
   offset: the position of the group's auto.offset.reset policy (earliest → log start, latest → end).

2. Stream partitions stay held back until Faust's recovery has sought them and cleared the streams.
   Recovery reads the changelogs with the consumer flow *active*, and ends (Recovery.on_recovery_completed,
   and Recovery._resume_streams without tables) with: resume the stream partitions → await perform_seek
   → `flow_control.resume()`, which empties every stream's queue → `consumer.resume_flow()`. The fetcher
   keeps running all along, so between the first and the last step it delivers records of the resumed
   stream partitions: before the seek lands, from wherever aiokafka's position was (and the loop still
   iterating that fetch moves Faust's read offset past the seek target, so the records re-fetched from
   the committed offset are dropped as already read); after it, into queues that `flow_control.resume()`
   then empties, with the read offset already past them, so they are never fetched again. Either way the
   records are neither processed nor re-read, and the next commit passes over them (Faust's
   `Consumer._new_offset` tolerates a hole of one offset at the committed position, and fills recorded
   gaps). Measured with the join + kill -9 test: one to a hundred readings of the moved partitions lost
   in 3 of 4 runs, both at the join and at the kill. The fix stops the flow when Faust resumes stream
   partitions; every such call is followed by the seek and then `resume_flow()`, so records flow again
   only from the committed offsets, into streams that are already cleared. Faust also forgets to drop
   revoked partitions from its set of partitions under back-pressure, which the fetcher delivers from
   even while they are paused for recovery; they are dropped on revocation here.

3. Faust's livelock detector skips partitions that have no fetch position yet. It reads aiokafka's
   `TopicPartitionState.position`, which asserts there is one; a partition awaiting its offset reset
   right after a rebalance crashed the surviving worker (seen once in ~20 runs of the join + kill test).

4. A write to a connection Kafka has just closed is a connection error, as aiokafka expects. Under
   uvloop (the worker's loop, and its consumer thread's) the write raises RuntimeError ("unable to
   perform operation on <TCPTransport closed=True ...>; the handler is closed"), not the OSError
   `AIOKafkaConnection.send` catches (aiokafka issue 1038). When it hit the metadata request of the
   consumer's synchronizer task at a Kafka SIGKILL, that task died, so every later metadata refresh
   waited forever: the coordinator was never looked up again, heartbeats and commits stopped, and the
   fetch loop's periodic commit blocked the worker for good (the short soak, after the first fix: its
   lag flat; in the live process, `_md_synchronizer` finished with that RuntimeError, its update
   future pending with 186 waiters, the coordinator lookup lock held, a commit pending 5 minutes).

5. What a fetch brought while a rebalance stopped the flow is sought back, not consumed
   (`keep_unconsumed`): Faust drops it unread, and a table changelog sought by recovery before such
   a fetch returned was never read again, so recovery waited for ever.

Besides the corrections, a batch path (issue #24): the records of topics given a `BatchQueue`
(`batch_queue`) go from the fetch loop to their agent as lists, one hand-off per fetch round instead
of Faust's per record `wait_first` (four futures), decode into an Event, queue put, stream step and
ack (~44 us of Python per record, py-spy). What Faust does per record stays: the read-offset check
that drops records fetched twice, gaps, the unacked set of `track_message` (Faust's shutdown and
revocation wait on it; its per-record sensor call is left out: the quiet Monitor counts nothing), the
commit-every count; the agent acks each record after processing it, so commits
follow the same rule as before. The queue is one of Faust's flow-controlled queues: it is emptied
where Faust empties its streams' queues (a revocation, and the flow resumed after a rebalance's
seek), and records queued but not processed are never acked, so they are fetched again from the
committed offset. The records it empties out are dropped from the unacked set at once: a revocation
waits for that set to be empty, and the fetch loop's last round, still referenced while the loop
waited for the flow, otherwise kept it waiting for good (`BatchQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiokafka
from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import (
    Assignment,
    Subscription,
    SubscriptionState,
    TopicPartitionState,
)
from aiokafka.errors import IllegalStateError, KafkaConnectionError
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
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
        (faust_aiokafka.AIOKafkaConsumerThread, "verify_event_path"),
        (faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records"),
        (faust_aiokafka.Consumer, "_new_consumer_thread"),
        (faust_aiokafka.Consumer, "resume_partitions"),
        (faust_aiokafka.Consumer, "on_partitions_revoked"),
        (faust_aiokafka.Consumer, "stop_flow"),
        (faust_aiokafka.Consumer, "_is_changelog_tp"),
        (faust_aiokafka.Consumer, "on_buffer_full"),
        (faust_aiokafka.Consumer, "perform_seek"),
        (faust_aiokafka.Consumer, "_buffered_partitions"),
        # The batch path's fetch loop (_Consumer._drain_messages) and the per-record bookkeeping it keeps.
        (faust_aiokafka.Consumer, "_drain_messages"),
        (faust_aiokafka.Consumer, "getmany"),
        (faust_aiokafka.Consumer, "_read_offset"),
        (faust_aiokafka.Consumer, "_add_gap"),
        (faust_aiokafka.Consumer, "_commit_every"),
        (faust_aiokafka.Consumer, "_n_acked"),
        (faust_aiokafka.Consumer, "_unacked_messages"),
        (faust_aiokafka.Consumer, "suspend_flow"),
        # The stall watch times the consumer's offset commits (backend/watchdog.py).
        (faust_aiokafka.Consumer, "_commit"),
        (Recovery, "on_recovery_completed"),
        (Recovery, "_resume_streams"),
        (Collection, "data"),
        (Collection, "send_changelog"),
    ],
    "backend/transport.py and backend/app.py",
)
# What the corrected seek calls on aiokafka's consumer (whose 0-offset skip it works around).
pins.require(
    "aiokafka",
    "0.14",
    [
        *(
            (aiokafka.AIOKafkaConsumer, n)
            for n in ("seek", "seek_to_committed", "seek_to_beginning", "seek_to_end")
        ),
        (TopicPartitionState, "has_valid_position"),
        # Correction 3 reads the fetcher's subscription state.
        (aiokafka.AIOKafkaConsumer, "_fetcher"),
        (Fetcher, "_subscriptions"),
        (SubscriptionState, "subscription"),
        (Subscription, "assignment"),
        (Assignment, "state_value"),
        # Correction 4 wraps the connection's writes and uses its own close path.
        (AIOKafkaConnection, "send"),
        (AIOKafkaConnection, "_send_sasl_token"),
        (AIOKafkaConnection, "close"),
        (AIOKafkaConnection, "_writer"),
        (AIOKafkaConnection, "_host"),
        (AIOKafkaConnection, "_port"),
    ],
    "backend/transport.py",
)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def verify_event_path(self, now: float, tp: Any) -> None:
        # Correction 3: a partition without a position has no event path to verify yet.
        subscription = self._ensure_consumer()._fetcher._subscriptions.subscription
        if subscription is not None:
            state = subscription.assignment.state_value(aiokafka.TopicPartition(tp.topic, tp.partition))
            if state is not None and not state.has_valid_position:
                return None
        return super().verify_event_path(now, tp)

    async def seek_to_committed(self) -> Mapping[Any, int]:
        return await self.call_thread(self._seek_to_committed_or_reset)  # type: ignore[no-any-return]

    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: set[Any],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        # Correction 5, in the same step as the fetch's return (no await between: no seek can come
        # in between on this thread).
        return keep_unconsumed(consumer, records, self.consumer.flow_active, active_partitions)

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


def keep_unconsumed(
    consumer: aiokafka.AIOKafkaConsumer,
    records: Mapping[Any, list[Any]],
    flow_active: bool,
    active_partitions: set[Any] | None,
) -> Mapping[Any, list[Any]]:
    """Correction 5: the records Faust will drop unread are handed back to Kafka, not consumed.

    A fetch waits up to a second; a rebalance can stop the flow and pause partitions meanwhile, and
    Faust's `getmany` then drops what the fetch brought (flow stopped, or partition no longer
    active), while aiokafka has already moved its position past it. For stream partitions the seek
    to committed offsets that ends recovery fetches them again (correction 1), but a table
    changelog is positioned only once, by recovery's seek before it resumes the flow: a fetch
    that returned between that seek and `resume_flow` took the changelog's records away, and
    recovery waited for good for events that never came ("No event received for active tp",
    the worker stuck in its rebalance; the join and kill tests, about 1 run in 20 under load).
    Those partitions are sought back to the first record they brought, so the position is what it
    would be had the fetch not happened (aiokafka returns a partition's records only from its
    current position, so nothing before them is skipped)."""
    if flow_active and active_partitions is None:
        return records
    kept: dict[Any, list[Any]] = {}
    for tp, batch in records.items():
        if flow_active and tp in active_partitions:  # type: ignore[operator]
            kept[tp] = batch
        elif batch:
            with contextlib.suppress(IllegalStateError):  # no longer assigned: nothing to keep
                consumer.seek(tp, batch[0].offset)
    return kept


class BatchQueue:
    """Records of one topic from the fetch loop to its agent, in fetch order, as lists.

    Unbounded appends with a soft limit: the fetch loop waits for room once the queue holds `limit`
    records (back-pressure without a blocking put a `clear` could strand). Managed by Faust's flow
    control like a stream's queue: `clear` when a rebalance revokes partitions and when the flow
    resumes after its seek.

    `clear` hands the records it drops to `on_drop` (the consumer stops tracking them as unacked).
    Faust forgets a cleared stream's records only when they are garbage (its unacked set is a
    WeakSet), and a revocation waits until that set is empty (`Consumer.wait_empty`, no timeout). A
    dropped list that is still referenced elsewhere, as the fetch loop's last round was while it
    waited for the flow to resume, kept the revocation waiting for acks that never come, and the flow
    never resumed: the worker stopped consuming for good (the short soak's Kafka kill).

    The limit and a batch's size count records, or with `weigh` what it gives per record: the place
    topic's records are bundles of up to records.BUNDLE_MAX readings, so counting them bounded neither
    the memory a queue holds nor how long a batch holds the event loop (150 bundles carried 30k
    readings); they are weighed by their size in bytes."""

    def __init__(
        self,
        limit: int,
        on_drop: Callable[[list[Any]], None] | None = None,
        weigh: Callable[[Any], int] | None = None,
    ) -> None:
        self.limit = limit
        self.on_drop = on_drop
        self.weigh = weigh
        self._lists: deque[list[Any]] = deque()
        self._count = 0
        self._ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    def __len__(self) -> int:
        return self._count

    def put(self, records: list[Any]) -> None:
        self._lists.append(records)
        weigh = self.weigh
        self._count += len(records) if weigh is None else sum(map(weigh, records))
        self._ready.set()
        if self._count >= self.limit:
            self.room.clear()

    def clear(self) -> None:
        if self.on_drop is not None:
            for records in self._lists:
                self.on_drop(records)
        self._lists.clear()
        self._count = 0
        self._ready.clear()
        self.room.set()

    async def get(self, max_records: int, within_s: float) -> list[Any]:
        """At least one record, at most `max_records` (or records weighing that much, the first one
        whatever it weighs): what is queued, waiting up to `within_s` after the first record for the
        batch to fill."""
        while not self._count:
            self._ready.clear()
            await self._ready.wait()
        if self._count < max_records and within_s > 0:
            deadline = asyncio.get_running_loop().time() + within_s
            while self._count < max_records:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), left)
                except TimeoutError:
                    break
        out: list[Any] = []
        if self.weigh is None:
            while self._lists and len(out) < max_records:
                head = self._lists[0]
                take = max_records - len(out)
                if len(head) <= take:
                    out.extend(self._lists.popleft())
                else:
                    out.extend(head[:take])
                    self._lists[0] = head[take:]
            self._count -= len(out)
        else:
            self._count -= self._take_weighed(out, max_records)
        if self._count < self.limit:
            self.room.set()
        return out

    def _take_weighed(self, out: list[Any], max_weight: int) -> int:
        """Moves queued records into `out` while they weigh at most `max_weight` together (the first
        one always); returns their weight."""
        weigh = self.weigh
        assert weigh is not None
        taken = 0
        while self._lists:
            head = self._lists[0]
            n = 0
            for record in head:
                w = weigh(record)
                if out and taken + w > max_weight:
                    break
                out.append(record)
                taken += w
                n += 1
            if n == len(head):
                self._lists.popleft()
                continue
            self._lists[0] = head[n:]
            break
        return taken


def batch_queue(
    app: Any, topic: str, limit: int, weigh: Callable[[Any], int] | None = None
) -> BatchQueue:
    """The queue the fetch loop fills with `topic`'s records instead of Faust's per-record path."""
    queue = BatchQueue(limit, on_drop=app.consumer.untrack, weigh=weigh)
    app.flow_control.manage_queue(queue)
    app.transport.batch_queues[topic] = queue
    return queue


class _Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._commits_started: list[float] = []

    async def _drain_messages(self, fetcher: Any) -> None:
        queues: dict[str, BatchQueue] = self.transport.batch_queues  # type: ignore[attr-defined]
        if not queues:
            return await super()._drain_messages(fetcher)
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        unacked = self._unacked_messages
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (self._stopped.is_set() or fetcher_stopped()):
                records = self.getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                rounds: dict[str, list[Any]] = {}
                async for tp, message in records:
                    offset = message.offset
                    last = read_offset[tp]
                    if last is not None and offset < last:
                        continue  # fetched again after a seek: read already
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, last + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if tp.topic in queues:
                        # What track_message does, without its per-record call into Faust's sensors
                        # (the quiet Monitor counts nothing; 2.5 % of the event loop, py-spy).
                        unacked.add(message)
                        rounds.setdefault(tp.topic, []).append(message)
                    else:  # changelogs and Faust's own topics: Faust's per-record path
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    read_offset[tp] = offset
                for topic, batch in rounds.items():
                    queue = queues[topic]
                    queue.put(batch)
                    if not queue.room.is_set():
                        await self.wait_first(queue.room.wait(), self.suspend_flow.wait())
        except (asyncio.CancelledError, *self.consumer_stopped_errors):  # type: ignore[misc]
            if not self.transport.app.should_stop:
                raise

    async def _commit(self, offsets: Any) -> bool:
        # Since when each commit in flight has waited, for the stall watch (backend/watchdog.py).
        started = time.monotonic()
        self._commits_started.append(started)
        try:
            done: bool = await super()._commit(offsets)
            return done
        finally:
            self._commits_started.remove(started)

    def commit_since(self) -> float | None:
        """When the oldest offset commit still in flight started (time.monotonic), None if none."""
        return min(self._commits_started, default=None)

    def untrack(self, records: list[Any]) -> None:
        """Records dropped unprocessed by a cleared BatchQueue: no longer awaited as unacked. Never
        acked, they hold back the commit and are fetched again from the committed offset."""
        unacked = self._unacked_messages
        for record in records:
            unacked.discard(record)

    def resume_partitions(self, tps: Iterable[Any]) -> None:
        tpset = set(tps)
        if any(not self._is_changelog_tp(tp) for tp in tpset):
            # Correction 2: Faust resumes stream partitions only to seek them and then resume the flow;
            # until then nothing of them may reach a stream (stale positions, queues about to be cleared).
            self.stop_flow()
        super().resume_partitions(tpset)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        # A revoked partition under back-pressure (`on_buffer_full`) would keep being delivered from
        # while paused for recovery, before its seek: it starts over like any other.
        self._buffered_partitions.difference_update(revoked)
        await super().on_partitions_revoked(revoked)

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_queues: dict[str, BatchQueue] = {}


def _send_or_connection_error(send: Callable[..., Any]) -> Callable[..., Any]:
    """Correction 4: `send` with a closed transport's RuntimeError turned into what aiokafka handles
    everywhere, a KafkaConnectionError after closing the connection (its own OSError path)."""

    @functools.wraps(send)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        writer = self._writer
        try:
            return send(self, *args, **kwargs)
        except RuntimeError as exc:
            if writer is None or not writer.transport.is_closing():
                raise
            self.close(reason=CloseReason.CONNECTION_BROKEN)
            raise KafkaConnectionError(f"Connection at {self._host}:{self._port} broken: {exc}") from exc

    wrapped.iot_corrected = True  # type: ignore[attr-defined]
    return wrapped


def correct_aiokafka_connections() -> None:
    """Correction 4 on aiokafka's connection class (every client of the process: the consumer and
    Faust's producer); idempotent."""
    for name in ("send", "_send_sasl_token"):
        method = getattr(AIOKafkaConnection, name)
        if not getattr(method, "iot_corrected", False):
            setattr(AIOKafkaConnection, name, _send_or_connection_error(method))


def install(app: Any) -> None:
    """Make `app` use this transport; call before anything touches `app.transport`."""
    correct_aiokafka_connections()
    app.transport = Transport(app.conf.broker_consumer, app)

"""How far each source partition's input has come, and what that holds back in the place scope.

The place scope holds its windows until every source partition's input passed them: after each batch
the sensor scope sends every place partition a watermarks record (records.WATERMARKS_KEY) saying how
far each source partition it owns has come, and the place scope caps its keys' watermarks below the
lowest of those (ScopeEngine.holds), so a backlog read unevenly across source partitions is merged in
event-time order instead of amended (the idea of Kafka Streams' max.task.idle.ms; exactness does not
depend on it).
"""

from __future__ import annotations

import time
from typing import Any

from iot import contract
from iot.topics import TOPIC_PARTITIONS

from .intake import PlaceMarks
from .records import WATERMARKS_KEY, Forward, encode_watermarks
from .scope import Partitions
from .settings import Settings

__all__ = ["HELD", "Watermarks"]

# A hold below every reading's ts (epoch ms are positive): no window closes under it.
HELD = -1


class Watermarks:
    """The source partitions' progress this worker sends (sensor scope) and receives (place scope),
    and the holds it sets."""

    def __init__(self, settings: Settings, partitions: Partitions) -> None:
        self.settings = settings
        self.partitions = partitions
        self.place_partitions = TOPIC_PARTITIONS[contract.TOPIC_READINGS]  # the repartition topic's
        self.positions: dict[Any, int] = {}  # (topic, partition) -> last offset taken
        # The highest ts forwarded from each source partition (sensor scope), and the source
        # watermarks each place partition received: (place partition, source partition) ->
        # (watermark or None once caught up, monotonic time received). records.WATERMARKS_KEY.
        self.source_marks: dict[int, int] = {}
        self.place_marks: PlaceMarks = {}
        # Since the last rebalance (monotonic): for up to the idle timeout after it, a source partition
        # not read yet, and a place partition no watermarks reached yet, hold everything (HELD); after
        # that they hold nothing back.
        self.hold_since = time.monotonic()

    def rebalanced(self) -> None:
        """The holds start over: what this worker reads now is counted from the assignment on."""
        self.hold_since = time.monotonic()

    def behind(self, topic: str, assigned: Any) -> set[int]:
        """Partitions of `topic` with input not read yet (no idle close by wall clock alone there:
        ScopeEngine.expire). A partition not read since the start counts as caught up."""
        out = set()
        for tp in assigned:
            if tp.topic != topic:
                continue
            pos, high = self.positions.get(tp), self.partitions.highwater(tp)
            if pos is not None and high is not None and high - pos - 1 > 0:
                out.add(tp.partition)
        return out

    def holds(self, now_s: float) -> dict[int, int]:
        """Per place partition, the lowest source watermark it received that still holds: from a
        source partition behind (not caught up), received within the idle timeout (a worker that
        stopped sending them holds nothing back for longer). A place partition that no watermarks
        reached since the last rebalance is held (HELD) for up to the idle timeout."""
        stale = now_s - self.settings.idle_timeout_s
        holds: dict[int, int] = {}
        reached: set[int] = set()
        for (place_partition, _), (mark, received) in self.place_marks.items():
            if received < stale:
                continue
            reached.add(place_partition)
            if mark is None:
                continue
            held = holds.get(place_partition)
            if held is None or mark < held:
                holds[place_partition] = mark
        if now_s - self.hold_since < self.settings.idle_timeout_s:
            for tp in self.partitions.assignment():
                if tp.topic == self.settings.place_topic and tp.partition not in reached:
                    holds[tp.partition] = HELD
        return holds

    def records(self) -> list[Forward]:
        """To every place partition, how far each source partition this worker owns has come (sent
        after the batch's bundles: the same producer keeps them in order on each partition)."""
        marks_of = self.source_marks
        assigned = self.partitions.assignment()
        topic = self.settings.source_topic
        behind = self.behind(topic, assigned)
        waiting = time.monotonic() - self.hold_since < self.settings.idle_timeout_s
        marks: dict[int, int | None] = {}
        for tp in assigned:
            if tp.topic != topic:
                continue
            if tp in self.positions:
                marks[tp.partition] = marks_of.get(tp.partition, HELD) if tp.partition in behind else None
            else:
                # Not read since the assignment: held while it may still bring input (its highwater
                # unknown or above 0), for up to the idle timeout; an empty partition holds nothing.
                high = self.partitions.highwater(tp)
                marks[tp.partition] = HELD if waiting and (high is None or high > 0) else None
        value = encode_watermarks(marks)
        return [(WATERMARKS_KEY, value, q) for q in range(self.place_partitions)]

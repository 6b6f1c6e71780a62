"""What Kafka holds during bench/soak.py, read by clients of the soak's own.

KafkaWatch reads iot.readings and the DLQ from the beginning: each distinct reading once, its latency
split in two at the gateway's `received_at` (board → gateway: the fleet's own sending, Mosquitto, the
gateway's MQTT thread; gateway → here: produce, Kafka's acks=all, this consumer's fetch), duplicates,
and which window slots every device and place has readings in (what windows must exist at the end).
LagProbe reads the backend group's consumer lag.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from array import array

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from soak_common import BACKEND_APP
from soak_hostile import HOSTILE_PLACE

from iot import contract
from iot.kafka import KafkaConnection


class KafkaWatch(threading.Thread):
    """First copy of every reading: latency ts → Kafka and its two halves, duplicates, window slots.

    `slot_ms`: readings are remembered per key as `ts // slot_ms` (a divisor of every window step),
    enough to know every window a key must have (iot.harness.oracle.windows_of_slots)."""

    def __init__(self, kafka: KafkaConnection, slot_ms: int) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                **kafka.librdkafka(),
                "group.id": "soak-watch",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                # The latency measured here includes this consumer's fetch wait: keep it small.
                "fetch.wait.max.ms": 20,
                "log_level": 0,
            }
        )
        self.slot_ms = slot_ms
        self.stop_event = threading.Event()
        self.seen: dict[str, bytearray] = {}
        self.records = 0
        self.duplicates = 0
        self.dlq = 0
        self.hostile_records = 0
        self.ts = array("q")
        self.latency = array("q")  # ts -> read here
        self.to_gateway = array("q")  # ts -> received_at (the gateway's clock is this machine's)
        self.per_second: dict[int, int] = {}
        self.device_slots: dict[str, set[int]] = {}
        self.place_slots: dict[str, set[int]] = {}

    def run(self) -> None:
        parts: list[TopicPartition] = []
        for topic in (contract.TOPIC_READINGS, contract.TOPIC_DLQ):
            meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self.consumer.assign(parts)
        while not self.stop_event.is_set():
            # consume() returns when it has num_messages or its timeout passed: the timeout is part
            # of the latency measured here, so it is short.
            messages = self.consumer.consume(num_messages=5000, timeout=0.02)
            now = time.time_ns() // 1_000_000
            for msg in messages:
                if msg.error() is not None:
                    continue
                if msg.topic() == contract.TOPIC_DLQ:
                    self.dlq += 1
                    continue
                self._reading(json.loads(msg.value()), now)
        self.consumer.close()

    def _reading(self, value: dict[str, object], now: int) -> None:
        if value["place"] == HOSTILE_PLACE:
            # Accounted apart (soak_accounting); its windows must still go final like the fleet's.
            self.hostile_records += 1
            slot = int(value["ts"]) // self.slot_ms  # type: ignore[call-overload]
            self.device_slots.setdefault(str(value["device"]), set()).add(slot)
            self.place_slots.setdefault(HOSTILE_PLACE, set()).add(slot)
            return
        self.records += 1
        device = str(value["device"])
        seqs = self.seen.get(device)
        if seqs is None:
            seqs = self.seen[device] = bytearray()
        seq = int(value["seq"])  # type: ignore[call-overload]
        if seq >= len(seqs):
            seqs.extend(bytes(seq + 1024 - len(seqs)))
        if seqs[seq]:
            self.duplicates += 1
            return
        seqs[seq] = 1
        ts = int(value["ts"])  # type: ignore[call-overload]
        self.ts.append(ts)
        self.latency.append(now - ts)
        self.to_gateway.append(int(value["received_at"]) - ts)  # type: ignore[call-overload]
        slot = ts // self.slot_ms
        self.device_slots.setdefault(device, set()).add(slot)
        self.place_slots.setdefault(str(value["place"]), set()).add(slot)
        second = now // 1000
        self.per_second[second] = self.per_second.get(second, 0) + 1

    def distinct(self) -> int:
        return len(self.ts)


PLACE_TOPIC = f"{BACKEND_APP}-readings-by-place"  # the backend's repartition topic (its settings)


class LagProbe:
    """The backend group's lag on `topics` (iot.readings by default); its client is made again after a
    failure (Kafka SIGKILLed and back).

    The group's committed offsets are read by a consumer of that group that never subscribes (so it
    never joins it), not by AdminClient.list_consumer_group_offsets: right after Kafka restarts, the
    group coordinator answers NOT_COORDINATOR, and librdkafka (2.16) then hands that answer to the
    consumer-group handle an admin client does not have: rd_kafka_cgrp_op(NULL) in rdk:main, a
    segfault of the whole soak (librdkafka issue 5040; core of a short soak: ListConsumerGroupOffsets
    -> rd_kafka_handle_OffsetFetch -> rd_kafka_cgrp_op). A consumer's own group handle takes it."""

    def __init__(self, kafka: KafkaConnection, topics: tuple[str, ...] = (contract.TOPIC_READINGS,)) -> None:
        self.kafka = kafka
        self.topics = topics
        self.consumer: Consumer | None = None

    def lag(self) -> int | None:
        try:
            if self.consumer is None:
                self.consumer = Consumer(
                    {
                        **self.kafka.librdkafka(),
                        "group.id": BACKEND_APP,
                        "enable.auto.commit": False,
                        "log_level": 0,
                    }
                )
            parts = [
                TopicPartition(topic, p)
                for topic in self.topics
                for p in self.consumer.list_topics(topic, timeout=3).topics[topic].partitions
            ]
            total = 0
            for tp in self.consumer.committed(parts, timeout=3):
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=3
                )
                total += max(0, high - max(tp.offset, 0))
            return total
        except Exception:  # Kafka away (a fault) or the group not formed yet: no sample, a fresh client
            self.close()
            return None

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
        self.consumer = None

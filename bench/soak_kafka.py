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

from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from soak_common import BACKEND_APP
from soak_hostile import HOSTILE_PLACE

from iot import contract
from iot.kafka import KafkaConnection


class KafkaWatch(threading.Thread):
    """First copy of every reading: latency ts → Kafka and its two halves, duplicates, window slots.

    `slot_ms`: readings are remembered per key as `ts // slot_ms` (a divisor of every window step),
    enough to know every window a key must have (soak_accounting.expected_windows)."""

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
    """The backend group's lag on `topics` (iot.readings by default). Its clients live as long as the
    probe: librdkafka reconnects them by itself after Kafka was SIGKILLed and back. Made again after
    each failure, as they were, the AdminClient went away with a request still in flight (the
    timed-out `list_consumer_group_offsets`), and librdkafka's main thread crashed (SIGSEGV, NULL+0x58)
    when its answer came once Kafka was back: the soak died in every run with the `kafka` fault
    (confluent-kafka 2.16.2; 4 of 4 runs here)."""

    def __init__(self, kafka: KafkaConnection, topics: tuple[str, ...] = (contract.TOPIC_READINGS,)) -> None:
        self.kafka = kafka
        self.topics = topics
        self.admin = AdminClient({**kafka.librdkafka(), "log_level": 0})
        self.consumer: Consumer | None = Consumer(
            {**kafka.librdkafka(), "group.id": "soak-lag", "log_level": 0}
        )

    def lag(self) -> int | None:
        if self.consumer is None:
            return None
        try:
            future = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(BACKEND_APP)])
            committed = future[BACKEND_APP].result(timeout=3).topic_partitions
            total = 0
            for tp in committed:
                if tp.topic not in self.topics:
                    continue
                part = TopicPartition(tp.topic, tp.partition)
                _low, high = self.consumer.get_watermark_offsets(part, timeout=3)
                total += max(0, high - max(tp.offset, 0))
            return total
        except Exception:  # Kafka away (a fault) or the group not formed yet: no sample this time
            return None

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
        self.consumer = None

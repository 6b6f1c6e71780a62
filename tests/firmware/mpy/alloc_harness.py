"""Runs on the MicroPython unix port (tests/firmware/test_alloc.py): heap bytes the firmware
allocates per QoS 1 publish and per reading, counted with gc.mem_alloc() while gc is disabled.

The broker is a fake with the port's stream methods (write(buf, off, max_len), readinto(buf,
nbytes)) that PUBACKs every QoS 1 PUBLISH at once and allocates nothing itself, so every byte
counted is the firmware's. Allocation counts are deterministic: no timing in them.
"""

import gc
import json
import os
import time

import mqtt
from outbox import Outbox


class Board:
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_add(self, t, d):
        return time.ticks_add(t, d)

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def feed(self):
        pass


class Broker:
    def __init__(self):
        self.client = None
        self.ack = bytearray(b"\x40\x02\x00\x00")
        self.pos = 4  # nothing to read

    def write(self, buf, off=0, max_len=-1):
        n = len(buf) - off if max_len < 0 else max_len
        if off == 0 and buf[0] & 0xF6 == 0x32:  # a QoS 1 PUBLISH starts
            pid = self.client._pid
            self.ack[2] = pid >> 8
            self.ack[3] = pid & 0xFF
            self.pos = 0
        return n

    def readinto(self, buf, nbytes=-1):
        n = len(buf) if nbytes < 0 else nbytes
        k = 0
        while k < n and self.pos < 4:
            buf[k] = self.ack[self.pos]
            k += 1
            self.pos += 1
        return k

    def close(self):
        pass


class Poller:
    def __init__(self, broker):
        self.broker = broker

    def readable(self, timeout_ms):
        return self.broker.pos < 4


client = mqtt.Client(Board(), "vt-0123456789", "host", 1883, 60)
broker = Broker()
broker.client = client
client._sock = broker  # connected: the CONNECT exchange is not the hot path
client._poller = Poller(broker)
os.mkdir("ob")  # the outbox's folder, in the test's fresh temp dir
box = Outbox(512, root="ob")
TOPIC = b"sensors/kitchen/vt-0123456789/reading"
READING = {"v": 1, "device": "vt-0123456789", "place": "kitchen", "boot": 3, "seq": 0,
           "ts": 1764614400000, "time_valid": True, "temperature": 21.37, "humidity": 45.12,
           "pressure": 1013.25, "luminosity": 312.5, "fw": "0.1.0"}
PAYLOAD = json.dumps(READING).encode()
RANGES = [[0, 0]]


def publish(seq):
    client.publish(TOPIC, PAYLOAD, 1, False, 5000, 3)


def encode(seq):
    READING["seq"] = seq
    json.dumps(READING).encode()


def reading(seq):
    """node.measure's encoding, enqueue, drain (publish, PUBACK), the gateway's ack released."""
    READING["seq"] = seq
    payload = json.dumps(READING).encode()
    box.push(3, seq, payload, False)
    client.publish(TOPIC, box.next_entry(), 1, False, 5000, 3)
    box.sent(0)
    RANGES[0][0] = RANGES[0][1] = seq
    box.ack(3, RANGES)


def per_call(fn, n=200):
    fn(0)  # warm: first-call caches, list growth
    fn(1)
    gc.collect()
    gc.disable()
    i = 2
    before = gc.mem_alloc()
    while i < n + 2:
        fn(i)
        i += 1
    after = gc.mem_alloc()
    gc.enable()
    return (after - before) / n


out = {"publish": per_call(publish), "encode": per_call(encode), "reading": per_call(reading)}
assert client._acked == client._pid
print(json.dumps(out))

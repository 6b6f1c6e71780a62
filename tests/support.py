"""Helpers shared by the tests: waiting on conditions with a deadline, unique ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns a truthy value or `timeout` seconds pass (then fail)."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value {last!r}")
        time.sleep(interval)
        last = condition()
    return last


def failed(request: Any) -> bool:
    """True when the test behind a fixture's `request` failed (phase reports from tests/conftest.py)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)


def unique(prefix: str) -> str:
    """An id that matches the contract's id pattern and is unique per call."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now (the kernel picks them, so they do not collide)."""
    import socket

    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def listening(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def commit_end_offsets(bootstrap: str, group: str, topic: str) -> None:
    """Commit a topic's current end offsets for a new consumer group, so a consumer joining it starts
    exactly here: on the shared stack, topics hold other runs' history that a test must not replay."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [
            TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in parts
        ]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def payload_v1(
    place: str, device: str, seq: int, ts: int | None = None, boot: int = 0, **over: Any
) -> dict[str, Any]:
    """A valid payload v1 reading (contract defaults), with any field overridden."""
    reading: dict[str, Any] = {
        "v": 1,
        "device": device,
        "place": place,
        "boot": boot,
        "seq": seq,
        "ts": int(time.time() * 1000) if ts is None else ts,
        "time_valid": True,
        "temperature": 21.5,
        "humidity": 45.0,
        "pressure": 1012.5,
        "luminosity": 300.0,
        "fw": "test-1.0",
    }
    reading.update(over)
    return reading


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text endpoint, by `name{labels}`; empty when it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples

"""aiokafka's connection failures during a Kafka outage fold into one structured line per interval."""

from __future__ import annotations

import logging

import pytest

from backend.startup import KafkaOutageLog

pytestmark = pytest.mark.unit


def record(text: str, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, text, None, None)


def test_connection_failures_become_one_line_per_interval_naming_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    fold = KafkaOutageLog("10.0.0.5:9092", every_s=10.0, clock=lambda: now[0])
    failure = "Unable connect to node with id 1: [Errno 111] Connection refused"
    with caplog.at_level(logging.INFO, logger="backend"):
        passed = []
        for step in range(40):  # 20 s of two failures a second
            now[0] = step * 0.5
            passed.append(fold.filter(record(failure)))
        assert not any(passed)  # none of aiokafka's own lines gets through
        lines = [r.getMessage() for r in caplog.records if r.name == "backend"]
    assert len(lines) == 2, lines  # at 0 s and at 10 s
    assert all(
        "kafka_unreachable" in ln and "address=10.0.0.5:9092" in ln and "action=" in ln for ln in lines
    )
    assert "lines=20" in lines[1]  # the ones folded since the first


def test_other_lines_pass_untouched() -> None:
    fold = KafkaOutageLog("k:9092")
    assert fold.filter(record("Unable connect to node with id 1", level=logging.INFO))
    assert fold.filter(
        record("Heartbeat failed for group g because it is rebalancing", level=logging.WARNING)
    )

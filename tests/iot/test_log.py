"""Structured log lines: one event per line whatever the values hold, secrets masked."""

from __future__ import annotations

import pytest

from iot.log import kv

pytestmark = pytest.mark.unit


def test_a_value_with_a_line_break_cannot_forge_a_log_line() -> None:
    # Topics and payload heads come from boards: a board chose this one.
    line = kv("health_ignored", topic="sensors/a/b\n2026-01-01 ERROR gateway forged=1/health", n=3)
    assert "\n" not in line
    assert line == 'health_ignored topic="sensors/a/b\\n2026-01-01 ERROR gateway forged=1/health" n=3'


@pytest.mark.parametrize("value", ["\r", "\x00", "\x1b[31m", "\u2028", "\ud800", 'a"\n'])
def test_control_characters_and_lone_surrogates_are_escaped(value: str) -> None:
    line = kv("e", v=value)
    assert line.isprintable() and line.isascii()
    line.encode("utf-8")  # a lone surrogate could not be written to the log


def test_plain_values_stay_as_they_were() -> None:
    assert kv("e", a="x", b="two words", c="", d='q"', e="é") == 'e a=x b="two words" c="" d="q\\"" e=é'
    assert kv("e", mqtt_password="s3cret") == "e mqtt_password=***"

"""The gateway runs with the cyclic collector tuned for readings in flight (gateway/cli.py): with
CPython's default, full passes over a drain's in-flight readings took a fifth of its CPU (issue #24)."""

from __future__ import annotations

import argparse
import gc
from typing import Any

import pytest

from gateway import cli
from iot import heap

pytestmark = pytest.mark.unit


def test_the_gateway_runs_with_a_young_generation_bigger_than_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, ...]] = []

    def run(_settings: Any) -> int:
        # What the gateway's main loop runs with.
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(cli.GatewaySettings, "from_env", staticmethod(lambda: object()))
    monkeypatch.setattr(cli, "_check_kafka", lambda _settings, **_kw: None)
    monkeypatch.setattr(cli, "run", run)
    before = gc.get_threshold()
    try:
        assert cli._main(argparse.Namespace(no_create_topics=False)) == 0
    finally:
        gc.set_threshold(*before)
    assert seen == [heap.GC_THRESHOLDS]
    assert heap.GC_THRESHOLDS[0] > 700  # CPython's default young generation

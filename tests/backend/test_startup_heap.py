"""The worker freezes its start-up heap before it runs (backend/cli.py): the cyclic collector's full
passes then skip it (measured: a fifth of the worker's CPU in a backlog, issue #24)."""

from __future__ import annotations

import argparse
import gc
from types import SimpleNamespace
from typing import Any

import pytest

import backend.app
from backend import cli
from backend import settings as settings_mod
from iot import heap

pytestmark = pytest.mark.unit


def test_the_worker_runs_with_what_existed_at_start_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    class Runtime:
        def __init__(self, settings: Any) -> None:
            self.settings = settings

        def run(self) -> int:
            # What the worker runs with: the objects made before it, frozen.
            return gc.get_freeze_count()

    monkeypatch.setattr(settings_mod, "load", lambda: SimpleNamespace(event_loop="asyncio"))
    monkeypatch.setattr(backend.app, "BackendRuntime", Runtime)
    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    try:
        assert cli._run_backend(argparse.Namespace()) > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_worker_runs_with_the_collector_tuned_for_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    class Runtime:
        def __init__(self, settings: Any) -> None:
            self.settings = settings

        def run(self) -> int:
            seen.append(gc.get_threshold())
            return 0

    seen: list[tuple[int, ...]] = []
    before = gc.get_threshold()
    monkeypatch.setattr(settings_mod, "load", lambda: SimpleNamespace(event_loop="asyncio"))
    monkeypatch.setattr(backend.app, "BackendRuntime", Runtime)
    try:
        cli._run_backend(argparse.Namespace())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen == [heap.GC_THRESHOLDS]
    assert heap.GC_THRESHOLDS[0] > 700  # a young generation bigger than CPython's default

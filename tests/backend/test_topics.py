"""The topics a worker needs before Faust starts: what Faust itself would create, with its settings."""

from __future__ import annotations

import pytest

from backend.app import READINGS_PARTITIONS, BackendRuntime
from backend.settings import load
from backend.topics import faust_topics
from iot.topics import TopicSpec

pytestmark = pytest.mark.unit


def test_every_table_changelog_and_the_leader_topic_are_created_as_faust_would() -> None:
    runtime = BackendRuntime(load({"IOT_BACKEND_APP_ID": "bk-topics"}))
    compact = {"cleanup.policy": "compact"}
    assert faust_topics(runtime.app) == [
        TopicSpec("bk-topics-sensor-state-changelog", READINGS_PARTITIONS, compact, exact_partitions=True),
        TopicSpec("bk-topics-place-state-changelog", READINGS_PARTITIONS, compact, exact_partitions=True),
        TopicSpec("bk-topics-__assignor-__leader", 1, {}, exact_partitions=True),
    ]
    names = [t.name for t in runtime.subscribed_topics()]
    assert names[:2] == ["iot.readings", "bk-topics-readings-by-place"]

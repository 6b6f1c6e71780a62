"""The topics a worker needs before Faust starts: what Faust itself would create, with its settings."""

from __future__ import annotations

import pytest

from backend.app import READINGS_PARTITIONS, BackendRuntime
from backend.settings import load
from backend.topics import TopicSpec, faust_topics

pytestmark = pytest.mark.unit


def test_every_table_changelog_and_the_leader_topic_are_created_as_faust_would() -> None:
    runtime = BackendRuntime(load({"IOT_BACKEND_APP_ID": "bk-topics"}))
    compact = {"cleanup.policy": "compact"}
    assert faust_topics(runtime.app) == [
        TopicSpec("bk-topics-sensor-state-changelog", READINGS_PARTITIONS, compact),
        TopicSpec("bk-topics-place-state-changelog", READINGS_PARTITIONS, compact),
        TopicSpec("bk-topics-__assignor-__leader", 1, {}),
    ]
    names = [t.name for t in runtime.subscribed_topics()]
    assert names[:2] == ["iot.readings", "bk-topics-readings-by-place"]

"""Fault injection for a backend worker process (on its PYTHONPATH): Kafka's metadata shows one topic
only `METADATA_LAG_S` seconds after this process asked for its creation, as a broker whose metadata
cache trails the controller right after CreateTopics does. Seen in CI: a changelog created at
20:52:35.679 was "not found in cluster metadata" at 35.709, and the group's assignments lacked it.

Both clients of the process see the lag: aiokafka (Faust's consumer and producer, and Faust's own
topic creation) and confluent-kafka's AdminClient (the backend's). Inactive without `METADATA_LAG_TOPIC`.
"""

from __future__ import annotations

import os
import time
from typing import Any

_TOPIC = os.environ.get("METADATA_LAG_TOPIC")

if _TOPIC:
    from aiokafka import cluster
    from confluent_kafka import admin
    from faust.transport.drivers import aiokafka as faust_aiokafka

    _lag_s = float(os.environ.get("METADATA_LAG_S", "3"))
    _created: list[float] = []

    def _hidden() -> bool:
        return not _created or time.monotonic() - _created[0] < _lag_s

    _faust_create = faust_aiokafka.Transport._really_create_topic

    async def _really_create_topic(self: Any, owner: Any, client: Any, topic: str, *a: Any, **kw: Any) -> Any:
        if topic == _TOPIC and not _created and topic not in client.cluster.topics():
            _created.append(time.monotonic())
        return await _faust_create(self, owner, client, topic, *a, **kw)

    faust_aiokafka.Transport._really_create_topic = _really_create_topic

    _admin_create = admin.AdminClient.create_topics

    def _create_topics(self: Any, new_topics: list[Any], *a: Any, **kw: Any) -> Any:
        if not _created and any(t.topic == _TOPIC for t in new_topics):
            _created.append(time.monotonic())
        return _admin_create(self, new_topics, *a, **kw)

    admin.AdminClient.create_topics = _create_topics  # type: ignore[method-assign]

    _admin_list = admin.AdminClient.list_topics

    def _list_topics(self: Any, *a: Any, **kw: Any) -> Any:
        meta = _admin_list(self, *a, **kw)
        if _TOPIC in meta.topics and _hidden():
            del meta.topics[_TOPIC]
        return meta

    admin.AdminClient.list_topics = _list_topics  # type: ignore[method-assign]

    class _Lagged:
        """A metadata response with the topic answered as unknown (error 3, no partitions)."""

        def __init__(self, response: Any, topics: list[Any]) -> None:
            self._response, self.topics = response, topics

        def __getattr__(self, name: str) -> Any:
            return getattr(self._response, name)

    _update = cluster.ClusterMetadata.update_metadata

    def _update_metadata(self: Any, metadata: Any) -> Any:
        if not _hidden():
            return _update(self, metadata)
        topics = [(3, t[1], *t[2:-1], []) if t[1] == _TOPIC and t[0] == 0 else t for t in metadata.topics]
        return _update(self, _Lagged(metadata, topics))

    cluster.ClusterMetadata.update_metadata = _update_metadata

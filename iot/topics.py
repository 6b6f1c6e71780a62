"""Kafka topics: the contract's (with the partition counts this deployment uses) and the one admin
that creates topics, checks the settings of those that exist and waits until the cluster's metadata
shows them. The gateway, the backend (its repartition topic and Faust's changelogs too) and `iot
stack up` all go through `TopicAdmin`.

Partitions are a deployment choice, not part of the wire contract: readings are keyed by device, so
their partition count bounds how many gateway producers and backend workers share the load.

Errors are typed, from librdkafka's error codes (never from a message's text):

    TopicError (IotError)
    ├── KafkaUnavailable    no broker answered in time
    ├── TopicCreateFailed   the cluster refused to create a topic (authorization, policy, config)
    ├── TopicMismatch       a topic exists with settings its users cannot work with
    └── TopicNotVisible     created, but not in the metadata with every partition led in time
    iot.kafka.KafkaAuthError (a ConfigError)  credentials or TLS refused; names the variable
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from iot import contract, log
from iot.errors import IotError
from iot.kafka import KafkaAuthError, KafkaConnection, classify_auth

__all__ = [
    "CONTRACT_TOPICS",
    "TOPIC_PARTITIONS",
    "KafkaUnavailable",
    "TopicAdmin",
    "TopicCreateFailed",
    "TopicError",
    "TopicMismatch",
    "TopicNotVisible",
    "TopicSpec",
]

TOPIC_PARTITIONS: Mapping[str, int] = {
    contract.TOPIC_READINGS: 6,
    contract.TOPIC_DLQ: 1,
    contract.TOPIC_WINDOWS_SENSOR: 3,
    contract.TOPIC_WINDOWS_PLACE: 3,
}

_log = log.get("iot.topics")
_POLL_S: Final = 0.05  # metadata polls against a deadline while waiting for topics to show


class TopicError(IotError):
    """A topic could not be created, checked or seen."""


class KafkaUnavailable(TopicError):
    """No broker answered in time."""


class TopicCreateFailed(TopicError):
    """The cluster refused to create a topic."""


class TopicMismatch(TopicError):
    """A topic exists with settings its users cannot work with."""


class TopicNotVisible(TopicError):
    """A topic is not in the metadata with every partition led after the timeout."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as its users need it. `exact_partitions`: an existing topic must have exactly this
    many partitions (Faust's co-partitioned source, repartition and changelog topics), otherwise any
    count is accepted. `config` entries are set on creation and must match on an existing topic."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    exact_partitions: bool = False


CONTRACT_TOPICS: Final = tuple(TopicSpec(name, parts) for name, parts in TOPIC_PARTITIONS.items())


class TopicAdmin:
    """Topic administration over one Kafka connection. `timeout` bounds every call, in seconds;
    `answer_timeout` (default `timeout`) bounds each look at the metadata, so a Kafka that is not
    there is reported within it while creating topics may take `timeout`."""

    def __init__(
        self,
        conn: KafkaConnection,
        timeout: float = 30.0,
        replication: int = 1,
        answer_timeout: float | None = None,
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.answer_timeout = timeout if answer_timeout is None else answer_timeout
        self.replication = replication
        self._refused: KafkaAuthError | None = None
        self._last_error = ""
        # log_level 0: librdkafka would print each failed connection attempt to stderr; what matters
        # comes back as one typed error from here instead.
        config: dict[str, Any] = {**conn.librdkafka(), "log_level": 0, "error_cb": self._on_error}
        self._admin = AdminClient(config)

    def _on_error(self, err: KafkaError) -> None:
        self._last_error = f"{err.name()}: {err.str()}"
        refused = classify_auth(self.conn, err.code(), err.str())
        if refused is not None and self._refused is None:
            self._refused = refused

    # --- reading ---------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Every topic's metadata (confluent_kafka TopicMetadata) by name. Polls in short steps so
        a refused login is reported as soon as the client hears of it, not after the timeout."""
        deadline = time.monotonic() + self.answer_timeout
        while True:
            step = max(0.1, min(1.0, deadline - time.monotonic()))
            try:
                topics: dict[str, Any] = self._admin.list_topics(timeout=step).topics
                return topics
            except KafkaException as exc:
                self._admin.poll(0)
                self._raise_refused(_code(exc), str(exc))
                if time.monotonic() >= deadline:
                    detail = self._last_error or str(exc)
                    raise KafkaUnavailable(
                        f"Kafka at {self.conn.bootstrap} ({self.conn.security_protocol}) did not answer in "
                        f"{self.answer_timeout:.0f}s: {detail[:200]}; is it up (iot stack status), and are "
                        "IOT_KAFKA_BOOTSTRAP and IOT_KAFKA_SECURITY_PROTOCOL its address and protocol?"
                    ) from None

    def missing(self, specs: Iterable[TopicSpec]) -> list[str]:
        """Names of the topics not in the cluster (checks the connection and the credentials too)."""
        existing = self.metadata()
        return [s.name for s in specs if s.name not in existing]

    # --- making ----------------------------------------------------------------------------------
    def ensure(self, specs: Iterable[TopicSpec], wait_visible: bool = False) -> list[str]:
        """Create the topics that do not exist, check the settings of those that do (TopicMismatch),
        and with `wait_visible` return only once the metadata shows each with every partition led
        (a broker's metadata trails a CreateTopics answer). Returns the names created. Idempotent:
        a topic another process made meanwhile counts as there."""
        wanted = {s.name: s for s in specs}
        existing = self.metadata()
        self._check([s for s in wanted.values() if s.name in existing], existing)
        created = self._create([s for s in wanted.values() if s.name not in existing])
        if created:
            _log.info("topics_created", topics=",".join(created), kafka=self.conn.describe())
        if wait_visible:
            # A topic that existed keeps its partition count; one made here must show all of them.
            self._wait({name: s.partitions if name in created else 1 for name, s in wanted.items()})
        return created

    def _create(self, specs: list[TopicSpec]) -> list[str]:
        if not specs:
            return []
        new = [NewTopic(s.name, s.partitions, self.replication, config=dict(s.config)) for s in specs]
        created = []
        for name, future in self._admin.create_topics(new, request_timeout=self.timeout).items():
            try:
                future.result(timeout=self.timeout)
                created.append(name)
            except KafkaException as exc:
                code = _code(exc)
                if code == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another process made it between our look and our create: there it is
                self._raise_refused(code, str(exc))
                if code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT):
                    raise KafkaUnavailable(f"creating topic {name} on {self.conn.bootstrap}: {exc}") from None
                why = (
                    "; this user may not create topics"
                    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED
                    else ""
                )
                raise TopicCreateFailed(
                    f"Kafka at {self.conn.bootstrap} refused to create topic {name}: {_detail(exc)}{why}; "
                    "create it by hand (its settings: iot/topics.py) or let this user create topics"
                ) from None
        return created

    def _check(self, specs: list[TopicSpec], existing: Mapping[str, Any]) -> None:
        for spec in specs:
            have = len(existing[spec.name].partitions or {})
            if spec.exact_partitions and have and have != spec.partitions:
                raise TopicMismatch(
                    f"topic {spec.name} has {have} partitions, its users need exactly {spec.partitions} "
                    "(co-partitioned with the backend's tables): recreate it with that many"
                )
        configured = [s for s in specs if s.config]
        if not configured:
            return
        resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in configured]
        try:
            answers = self._admin.describe_configs(resources, request_timeout=self.timeout)
            described = {res.name: fut.result(timeout=self.timeout) for res, fut in answers.items()}
        except KafkaException as exc:
            self._raise_refused(_code(exc), str(exc))
            raise KafkaUnavailable(f"reading topic settings from {self.conn.bootstrap}: {exc}") from None
        for spec in configured:
            entries = described[spec.name]
            for key, value in spec.config.items():
                actual = entries[key].value if key in entries else None
                if actual != value:
                    raise TopicMismatch(
                        f"topic {spec.name} has {key}={actual}, its users need {key}={value}: "
                        f"change it (kafka-configs --alter --entity-type topics --entity-name {spec.name} "
                        f"--add-config {key}={value})"
                    )

    def _wait(self, need: Mapping[str, int]) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            meta = self.metadata()
            pending = [name for name, parts in need.items() if not _complete(meta.get(name), parts)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TopicNotVisible(
                    f"topics not in the metadata of Kafka at {self.conn.bootstrap} after "
                    f"{self.timeout:.0f}s: {', '.join(pending)}"
                )
            time.sleep(_POLL_S)  # polling the metadata against a deadline, not a synchronisation sleep

    def _raise_refused(self, code: int, detail: str) -> None:
        refused = classify_auth(self.conn, code, detail) or self._refused
        if refused is not None:
            raise refused


def ensure_topics(
    conn: KafkaConnection | str, timeout: float = 30.0, answer_timeout: float | None = None
) -> list[str]:
    """The contract topics, created where missing and visible with every partition led before it
    returns (a client that looks right after `iot stack up` finds them whole); returns the names
    created. A bare bootstrap string means a PLAINTEXT connection."""
    if isinstance(conn, str):
        conn = KafkaConnection(conn)
    return TopicAdmin(conn, timeout, answer_timeout=answer_timeout).ensure(CONTRACT_TOPICS, wait_visible=True)


def _code(exc: KafkaException) -> int:
    err = exc.args[0] if exc.args else None
    return int(err.code()) if isinstance(err, KafkaError) else KafkaError.UNKNOWN


def _detail(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return f"{err.name()}: {err.str()}" if isinstance(err, KafkaError) else str(exc)


def _complete(meta: Any, partitions: int) -> bool:
    """A topic's metadata holds at least `partitions` partitions, each with a leader (what Faust's
    assignor counts)."""
    if meta is None or meta.error is not None or not meta.partitions or len(meta.partitions) < partitions:
        return False
    return all(p.error is None and p.leader >= 0 for p in meta.partitions.values())

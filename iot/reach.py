"""Is a service a command needs there? When it is not, one line: which service, where, what to run.

A command checks what it needs before it starts work (`iot windows` MongoDB, `iot hil run` Kafka,
MongoDB and a shared broker), so a stopped stack reads

    Unreachable: MongoDB at 127.0.0.1:27017 does not answer (connection refused): run `iot stack up`,
    or start the compose stack (docs/COMPOSE.md)

instead of a client's topology dump or hundreds of librdkafka reconnect lines.

`KafkaClientLog` is what our Kafka clients hand librdkafka as its `logger`: its own lines (a down
broker repeats one per reconnect) go through our logging as `kafka_client_log` events at a level the
caller chooses, DEBUG by default, instead of to stderr.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Final

from iot import log
from iot.errors import IotError
from iot.kafka import KafkaConnection

__all__ = ["START_HINT", "KafkaClientLog", "Unreachable", "check_kafka", "check_mongo", "check_tcp"]

START_HINT: Final = "run `iot stack up`, or start the compose stack (docs/COMPOSE.md)"


class Unreachable(IotError):
    """A service a command needs did not answer."""


def _where(address: str) -> str:
    """host:port of a URI or address, without credentials, path or options."""
    rest = address.split("://", 1)[-1].rsplit("@", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0]


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    for words, reason in (
        (("refused",), "connection refused"),
        (("timed out", "timeout"), "no answer"),
        (("name or service", "nodename", "getaddrinfo", "resolve"), "unknown host"),
    ):
        if any(w in text for w in words):
            return reason
    return type(exc).__name__


def check_tcp(name: str, host: str, port: int, timeout: float = 3.0, hint: str = START_HINT) -> None:
    """Something accepts connections at host:port (a broker: the client says the rest)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise Unreachable(f"{name} at {host}:{port} does not answer ({_reason(exc)}): {hint}") from None


def check_mongo(uri: str, timeout: float = 5.0, hint: str = START_HINT) -> None:
    """A ping answered; a refused login names the variable to fix instead."""
    import pymongo
    from pymongo.errors import OperationFailure, PyMongoError

    where = _where(uri)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000)
    )
    try:
        client.admin.command("ping")
    except OperationFailure as exc:
        if exc.code in (13, 18):  # Unauthorized, AuthenticationFailed
            raise Unreachable(
                f"MongoDB at {where} refused the login: check the user and password in IOT_MONGO_URI"
            ) from None
        raise Unreachable(f"MongoDB at {where} answered the ping with an error: {exc}") from None
    except PyMongoError as exc:
        raise Unreachable(f"MongoDB at {where} does not answer ({_reason(exc)}): {hint}") from None
    finally:
        client.close()


def check_kafka(kafka: KafkaConnection | str, timeout: float = 5.0, hint: str = START_HINT) -> None:
    """The cluster's metadata came back over the connection's security (a bare bootstrap string is a
    PLAINTEXT connection); librdkafka's own lines stay out of the terminal. Credentials or a
    certificate the brokers refuse are not "unreachable": that KafkaAuthError names the variable."""
    from iot.topics import KafkaUnavailable, TopicAdmin

    conn = KafkaConnection(kafka) if isinstance(kafka, str) else kafka
    try:
        TopicAdmin(conn, timeout).metadata()
    except KafkaUnavailable as exc:
        reason = _reason(exc)
        reason = "no answer" if reason == type(exc).__name__ else reason
        raise Unreachable(f"Kafka at {conn.bootstrap} does not answer ({reason}): {hint}") from None


class KafkaClientLog:
    """A librdkafka `logger` (confluent-kafka calls `.log(level, fmt, *args)` from the client's poll):
    each line becomes a `kafka_client_log` event of `component` at `level`, whatever librdkafka's own
    severity was (kept as `severity`). A down broker is reported by the caller once, in one line;
    these are the details for a DEBUG run."""

    def __init__(self, component: str, level: int = logging.DEBUG) -> None:
        self._log = log.get(f"{component}.librdkafka")
        self._level = level

    def log(self, severity: int, msg: str, *args: Any) -> None:
        if self._log.enabled(self._level):
            text = msg % args if args else msg
            # confluent-kafka has turned librdkafka's syslog level into logging's already.
            name = logging.getLevelName(severity)
            self._log.log(self._level, "kafka_client_log", severity=name, detail=text)

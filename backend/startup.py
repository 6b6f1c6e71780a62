"""Before the worker starts: Kafka and MongoDB answer. While one does not, the backend says so within
seconds (which service, at which address, what to check) and tries again with backoff, instead of
waiting silently in a client's retries or stopping with a client's error.

Once it runs, a Kafka outage is seen first by Faust's consumer (aiokafka), which retries on its own and
logs every failed connection, several a second, without the address or what to do (measured: ~2,000
lines in 30 s). `KafkaOutageLog` turns those into one `kafka_unreachable` line per interval that does
say both. MongoDB outages surface as the batch path's write or read failures (retry.until_done)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from iot import log
from iot.reach import Unreachable, check_kafka, check_mongo

from .settings import Settings

_log = log.get("backend")
FIRST_S: Final = 1.0
MAX_S: Final = 30.0
PROBE_TIMEOUT_S: Final = 3.0


def wait_for_services(settings: Settings, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once Kafka's metadata and a MongoDB ping came back; log each failed attempt."""
    checks: tuple[tuple[str, str, str, Callable[[], None]], ...] = (
        (
            "kafka",
            settings.kafka.bootstrap,
            "check that Kafka runs there and IOT_KAFKA_BOOTSTRAP names it (`iot stack status`);"
            " the backend starts once it answers",
            lambda: check_kafka(settings.kafka, PROBE_TIMEOUT_S, hint="retrying"),
        ),
        (
            "mongodb",
            settings.mongo_host,
            "check that MongoDB runs there and IOT_MONGO_URI names it (`iot stack status`);"
            " the backend starts once it answers",
            lambda: check_mongo(settings.mongo_uri, PROBE_TIMEOUT_S, hint="retrying"),
        ),
    )
    for service, address, action, check in checks:
        delay = FIRST_S
        failures = 0
        while True:
            try:
                check()
            except Unreachable as exc:
                failures += 1
                _log.error(
                    f"{service}_unreachable",
                    address=address,
                    error=str(exc),
                    attempt=failures,
                    retry_in_s=delay,
                    action=action,
                )
                sleep(delay)
                delay = min(delay * 2, MAX_S)
                continue
            if failures:
                _log.info(f"{service}_reachable", address=address, after_attempts=failures + 1)
            break


class KafkaOutageLog(logging.Filter):
    """On aiokafka's loggers: its connection failure lines become one structured `kafka_unreachable`
    line every `every_s` (with the address, what to check, and how many were folded in)."""

    FAILURES: Final = (
        "Unable connect to node",
        "Unable to update metadata",
        "Unable to request metadata",
        "Failed fetch messages",
        "NodeNotReadyError",
        "GroupCoordinatorNotAvailable",
        "KafkaConnectionError",
    )

    def __init__(
        self, address: str, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.address = address
        self.every_s = every_s
        self.clock = clock
        self.folded = 0
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if not any(f in text for f in self.FAILURES):
            return True
        self.folded += 1
        now = self.clock()
        if self._last is None or now - self._last >= self.every_s:
            self._last = now
            _log.error(
                "kafka_unreachable",
                address=self.address,
                client=record.name,
                detail=text[:200],
                lines=self.folded,
                action="check that Kafka runs there (`iot stack status`); the consumer reconnects by"
                " itself, nothing is lost",
            )
            self.folded = 0
        return False


def fold_kafka_client_logs(address: str) -> KafkaOutageLog:
    """Put one KafkaOutageLog on every aiokafka logger (a filter on a logger sees only its own records,
    so each module's logger gets it); call after aiokafka is imported."""
    fold = KafkaOutageLog(address)
    names = [n for n in logging.Logger.manager.loggerDict if n == "aiokafka" or n.startswith("aiokafka.")]
    for name in names:
        logging.getLogger(name).addFilter(fold)
    return fold

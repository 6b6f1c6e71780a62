"""`iot gateway`: run the MQTT → Kafka gateway, configured by the environment."""

from __future__ import annotations

import argparse
from typing import Any

from iot import contract, heap, log
from iot.topics import CONTRACT_TOPICS, TopicAdmin, TopicError

from .service import run
from .settings import VARIABLES, GatewaySettings

__all__ = ["register"]

_log = log.get("gateway")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="bridge MQTT readings into Kafka (IOT_MQTT_*, IOT_KAFKA_*, IOT_GATEWAY_*)",
        description="Bridge sensors/+/+/reading (MQTT, shared subscription) into "
        f"{contract.TOPIC_READINGS} and {contract.TOPIC_DLQ}. Configured by environment variables.",
        epilog=VARIABLES.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--no-create-topics",
        action="store_true",
        help="do not create missing contract topics at start (for clusters that forbid it)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    settings = GatewaySettings.from_env()
    _check_kafka(settings, create=not args.no_create_topics)
    # For the readings in flight (iot/heap.py). No gc.freeze() of the start-up heap as in the backend:
    # without full passes, nothing walks it.
    heap.collector_tuned()
    return run(settings)


def _check_kafka(settings: GatewaySettings, create: bool) -> None:
    """Reach Kafka once before taking readings: credentials or TLS it refuses stop the gateway here
    (KafkaAuthError, naming the variable), and the contract topics are made where missing."""
    # A Kafka that is not there is reported within seconds (it used to take 10 s of silence).
    admin = TopicAdmin(settings.kafka, timeout=10.0, answer_timeout=3.0)
    try:
        if create:
            admin.ensure(CONTRACT_TOPICS)
            return
        missing = admin.missing(CONTRACT_TOPICS)
        if missing:
            _log.warning(
                "topics_missing",
                topics=",".join(missing),
                action="create them (iot stack up, or your cluster's tooling): readings wait until then",
            )
    except TopicError as exc:
        # Not fatal: readings wait un-acked (backpressure) until Kafka and its topics are there.
        _log.warning(
            "topics_unchecked",
            bootstrap=settings.kafka.bootstrap,
            protocol=settings.kafka.security_protocol,
            error=str(exc)[:300],
            action="starting anyway: check that Kafka runs at IOT_KAFKA_BOOTSTRAP, and create the "
            "contract topics (iot stack up) if they are missing; readings wait with the broker meanwhile",
        )

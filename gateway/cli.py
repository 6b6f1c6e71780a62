"""`iot gateway`: run the MQTT → Kafka gateway, configured by the environment."""

from __future__ import annotations

import argparse
from typing import Any

from confluent_kafka import KafkaException

from iot import contract, log
from iot.topics import TopicError, ensure_topics

from .service import run
from .settings import GatewaySettings

__all__ = ["register"]

_log = log.get("gateway")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="bridge MQTT readings into Kafka (IOT_MQTT_URL, IOT_KAFKA_BOOTSTRAP, IOT_GATEWAY_*)",
        description="Bridge sensors/+/+/reading (MQTT, shared subscription) into "
        f"{contract.TOPIC_READINGS} and {contract.TOPIC_DLQ}. Configured by environment variables.",
    )
    parser.add_argument(
        "--no-create-topics",
        action="store_true",
        help="do not create missing contract topics at start (for clusters that forbid it)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    settings = GatewaySettings.from_env()
    if not args.no_create_topics and not settings.kafka_extra:
        _ensure_topics(settings.kafka_bootstrap)
    return run(settings)


def _ensure_topics(bootstrap: str) -> None:
    try:
        # A Kafka that is not there is reported within seconds (it used to take 10 s of silence).
        ensure_topics(bootstrap, timeout=10.0, answer_timeout=3.0)
    except (KafkaException, TopicError) as exc:
        # Not fatal: readings wait un-acked (backpressure) until Kafka and its topics are there.
        _log.warning(
            "topics_unchecked",
            bootstrap=bootstrap,
            error=str(exc)[:200],
            action="starting anyway: check that Kafka runs at IOT_KAFKA_BOOTSTRAP, and create the "
            "contract topics (iot stack up) if they are missing; readings wait with the broker meanwhile",
        )

"""`iot gateway`: run the MQTT → Kafka gateway, configured by the environment."""

from __future__ import annotations

import argparse
from typing import Any

from iot import contract
from iot.topics import ensure_topics

from .service import run
from .settings import GatewaySettings

__all__ = ["register"]


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
        ensure_topics(settings.kafka_bootstrap)
    return run(settings)

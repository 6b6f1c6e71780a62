"""Backend settings: one frozen object built from the environment, validated with errors naming the
variable. The variables and their defaults are declared once (`VARIABLES`: the contract's, the shared
Kafka connection's, the backend's own IOT_BACKEND_*), which `iot backend --help` lists."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from iot import kafka as kafka_conn
from iot.contract import BACKEND_METRICS_PORT, ID_PATTERN, TOPIC_READINGS, is_id
from iot.env import CONTRACT, LOG, Var, Variables
from iot.kafka import KafkaConnection

from .errors import ConfigError
from .windows import WindowSpec, specs_from_seconds

EVENT_LOOPS: Final = ("uvloop", "asyncio")
OFFSET_RESETS: Final = ("earliest", "latest")

VARIABLES: Final = Variables(
    kafka_conn.VARIABLES,
    CONTRACT.pick(
        "IOT_MONGO_URI",
        "IOT_WINDOW_TUMBLING_S",
        "IOT_WINDOW_HOPPING_S",
        "IOT_WINDOW_HOP_STEP_S",
        "IOT_WINDOW_GRACE_S",
        "IOT_WINDOW_ALLOWED_LATENESS_S",
        "IOT_MAX_CLOCK_AHEAD_S",
    ),
    Var(
        "IOT_BACKEND_APP_ID",
        "iot-backend",
        "Faust app id and Kafka consumer group; workers of one id share the work",
    ),
    Var("IOT_BACKEND_SOURCE_TOPIC", TOPIC_READINGS, "the readings topic it consumes"),
    Var("IOT_BACKEND_METRICS_PORT", str(BACKEND_METRICS_PORT), "port of /metrics; 0: none"),
    # Loopback unless a scraper elsewhere needs it (in compose, Prometheus is another container).
    Var("IOT_BACKEND_METRICS_HOST", "127.0.0.1", "address of /metrics"),
    Var("IOT_BACKEND_WEB_PORT", "0", "Faust's own web server on 127.0.0.1; 0: none"),
    Var("IOT_BACKEND_IDLE_TIMEOUT_S", "30", "a quiet device's or place's windows are closed after this long"),
    Var("IOT_BACKEND_DATA_DIR", ".cache/iot-backend", "Faust's data folder (must be writable)"),
    Var("IOT_BACKEND_OFFSET_RESET", "earliest", "where a new consumer group starts: earliest or latest"),
    Var("IOT_BACKEND_BATCH_MAX", "10000", "readings per batch at most"),
    Var("IOT_BACKEND_BATCH_WITHIN_MS", "200", "how long a batch gathers at most, ms"),
    Var("IOT_BACKEND_TICK_S", "1", "how often idle keys are checked"),
    Var("IOT_BACKEND_COMMIT_INTERVAL_S", "1", "how often consumed offsets are committed"),
    Var(
        "IOT_BACKEND_SESSION_TIMEOUT_S", "10", "Kafka group session: how soon a dead worker's partitions move"
    ),
    Var(
        "IOT_BACKEND_STALL_S",
        "300",
        "a Kafka rebalance or offset commit lasting longer is a stall: the worker exits to be restarted",
    ),
    Var(
        "IOT_BACKEND_OPEN_WRITE_S",
        "5",
        "how often an open window is rewritten at most (spaced further when rewrites cost too much)",
    ),
    Var("IOT_BACKEND_EVENT_LOOP", "uvloop", " or ".join(EVENT_LOOPS)),
    LOG,
)


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaConnection
    mongo_uri: str
    tumbling_s: int
    hopping_s: int
    hop_step_s: int
    grace_s: int
    app_id: str
    source_topic: str
    metrics_port: int
    web_port: int
    idle_timeout_s: float
    data_dir: str
    offset_reset: str
    batch_max: int
    batch_within_ms: int
    tick_s: float
    commit_interval_s: float
    session_timeout_s: float
    stall_s: float
    open_write_s: float
    allowed_lateness_s: int
    max_clock_ahead_s: int
    event_loop: str
    metrics_host: str

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def specs(self) -> tuple[WindowSpec, ...]:
        return specs_from_seconds(self.tumbling_s, self.hopping_s, self.hop_step_s)

    @property
    def place_topic(self) -> str:
        """The repartition topic (readings keyed by place) private to this app id."""
        return f"{self.app_id}-readings-by-place"

    @property
    def mongo_host(self) -> str:
        """The Mongo URI without its credentials: safe to log."""
        return self.mongo_uri.rsplit("@", 1)[-1]

    def describe(self) -> dict[str, object]:
        """Fields safe to log: the Mongo URI may carry a password, so only its host part is shown."""
        host = self.mongo_uri.rsplit("@", 1)[-1]
        return {
            "app_id": self.app_id,
            "source": self.source_topic,
            "kafka": self.kafka.describe(),
            "mongo": host,
            "windows": f"tumbling={self.tumbling_s}s hopping={self.hopping_s}s/{self.hop_step_s}s",
            "grace_s": self.grace_s,
            "allowed_lateness_s": self.allowed_lateness_s,
            "max_clock_ahead_s": self.max_clock_ahead_s,
            "idle_timeout_s": self.idle_timeout_s,
            "event_loop": self.event_loop,
        }


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `env` (default: the process environment)."""
    e = VARIABLES.reader(env, ConfigError)
    app_id = e.text("IOT_BACKEND_APP_ID")
    if not is_id(app_id):
        raise ConfigError("IOT_BACKEND_APP_ID", f"{app_id!r} must match {ID_PATTERN.pattern}")
    source_topic = e.text("IOT_BACKEND_SOURCE_TOPIC")
    if not re.match(r"^[A-Za-z0-9._-]{1,200}$", source_topic):
        raise ConfigError("IOT_BACKEND_SOURCE_TOPIC", f"{source_topic!r} is not a valid Kafka topic name")
    tumbling = e.integer("IOT_WINDOW_TUMBLING_S", low=1)
    hopping = e.integer("IOT_WINDOW_HOPPING_S", low=1)
    step = e.integer("IOT_WINDOW_HOP_STEP_S", low=1)
    if step > hopping or hopping % step:
        raise ConfigError(
            "IOT_WINDOW_HOP_STEP_S", f"{step} must divide IOT_WINDOW_HOPPING_S={hopping} and not exceed it"
        )
    return Settings(
        kafka=KafkaConnection.read(e),
        mongo_uri=e.mongo_uri("IOT_MONGO_URI"),
        tumbling_s=tumbling,
        hopping_s=hopping,
        hop_step_s=step,
        grace_s=e.integer("IOT_WINDOW_GRACE_S", low=0),
        app_id=app_id,
        source_topic=source_topic,
        metrics_port=e.port("IOT_BACKEND_METRICS_PORT"),
        web_port=e.port("IOT_BACKEND_WEB_PORT"),
        idle_timeout_s=e.number("IOT_BACKEND_IDLE_TIMEOUT_S", low=0.1),
        data_dir=e.text("IOT_BACKEND_DATA_DIR"),
        offset_reset=e.choice("IOT_BACKEND_OFFSET_RESET", OFFSET_RESETS),
        batch_max=e.integer("IOT_BACKEND_BATCH_MAX", low=1),
        batch_within_ms=e.integer("IOT_BACKEND_BATCH_WITHIN_MS", low=1),
        tick_s=e.number("IOT_BACKEND_TICK_S", low=0.05),
        commit_interval_s=e.number("IOT_BACKEND_COMMIT_INTERVAL_S", low=0.1),
        # Kafka refuses sessions under its group.min.session.timeout.ms (6 s by default).
        session_timeout_s=e.number("IOT_BACKEND_SESSION_TIMEOUT_S", low=6.0),
        stall_s=e.number("IOT_BACKEND_STALL_S", low=10.0),
        open_write_s=e.number("IOT_BACKEND_OPEN_WRITE_S", low=0.0),
        allowed_lateness_s=e.integer("IOT_WINDOW_ALLOWED_LATENESS_S", low=0),
        max_clock_ahead_s=e.integer("IOT_MAX_CLOCK_AHEAD_S", low=0),
        event_loop=e.choice("IOT_BACKEND_EVENT_LOOP", EVENT_LOOPS),
        metrics_host=e.listen_host("IOT_BACKEND_METRICS_HOST"),
    )

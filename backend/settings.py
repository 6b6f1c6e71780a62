"""Backend settings: one frozen object built from the environment, validated with errors naming the
variable. Contract variables (IOT_KAFKA_BOOTSTRAP, IOT_MONGO_URI, IOT_WINDOW_*) keep the contract's
defaults; the backend's own ones are prefixed IOT_BACKEND_."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from iot.contract import BACKEND_METRICS_PORT, ENV_DEFAULTS, ID_PATTERN, is_id
from iot.env import EnvReader

from .errors import ConfigError
from .windows import WindowSpec, specs_from_seconds

BACKEND_DEFAULTS: Final[Mapping[str, str]] = {
    "IOT_BACKEND_APP_ID": "iot-backend",
    "IOT_BACKEND_SOURCE_TOPIC": "iot.readings",
    "IOT_BACKEND_METRICS_PORT": str(BACKEND_METRICS_PORT),
    # Loopback unless a scraper elsewhere needs it (in compose, Prometheus is another container).
    "IOT_BACKEND_METRICS_HOST": "127.0.0.1",
    "IOT_BACKEND_WEB_PORT": "0",
    "IOT_BACKEND_IDLE_TIMEOUT_S": "30",
    "IOT_BACKEND_DATA_DIR": ".cache/iot-backend",
    "IOT_BACKEND_OFFSET_RESET": "earliest",
    "IOT_BACKEND_BATCH_MAX": "2000",
    "IOT_BACKEND_BATCH_WITHIN_MS": "200",
    "IOT_BACKEND_TICK_S": "1",
    "IOT_BACKEND_COMMIT_INTERVAL_S": "1",
    "IOT_BACKEND_SESSION_TIMEOUT_S": "10",
    "IOT_BACKEND_OPEN_WRITE_S": "5",
    "IOT_BACKEND_EVENT_LOOP": "uvloop",
}
EVENT_LOOPS: Final = ("uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class Settings:
    kafka_bootstrap: str
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
    open_write_s: float
    allowed_lateness_s: int = int(ENV_DEFAULTS["IOT_WINDOW_ALLOWED_LATENESS_S"])
    max_clock_ahead_s: int = int(ENV_DEFAULTS["IOT_MAX_CLOCK_AHEAD_S"])
    event_loop: str = BACKEND_DEFAULTS["IOT_BACKEND_EVENT_LOOP"]
    metrics_host: str = BACKEND_DEFAULTS["IOT_BACKEND_METRICS_HOST"]

    @property
    def specs(self) -> tuple[WindowSpec, ...]:
        return specs_from_seconds(self.tumbling_s, self.hopping_s, self.hop_step_s)

    @property
    def place_topic(self) -> str:
        """The repartition topic (readings keyed by place) private to this app id."""
        return f"{self.app_id}-readings-by-place"

    def describe(self) -> dict[str, object]:
        """Fields safe to log: the Mongo URI may carry a password, so only its host part is shown."""
        host = self.mongo_uri.rsplit("@", 1)[-1]
        return {
            "app_id": self.app_id,
            "source": self.source_topic,
            "kafka": self.kafka_bootstrap,
            "mongo": host,
            "windows": f"tumbling={self.tumbling_s}s hopping={self.hopping_s}s/{self.hop_step_s}s",
            "grace_s": self.grace_s,
            "allowed_lateness_s": self.allowed_lateness_s,
            "max_clock_ahead_s": self.max_clock_ahead_s,
            "idle_timeout_s": self.idle_timeout_s,
            "event_loop": self.event_loop,
        }


class _Env:
    """The contract's defaults, then the backend's own (BACKEND_DEFAULTS), over one EnvReader."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.reader = EnvReader(env, ConfigError)

    @staticmethod
    def default(name: str) -> str:
        return BACKEND_DEFAULTS.get(name) or ENV_DEFAULTS[name]

    def text(self, name: str) -> str:
        return self.reader.text(name, self.default(name))

    def integer(self, name: str, minimum: int, maximum: int | None = None) -> int:
        return self.reader.integer(name, int(self.default(name)), minimum, maximum)

    def number(self, name: str, minimum: float) -> float:
        return self.reader.number(name, float(self.default(name)), minimum)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `env` (default: the process environment)."""
    e = _Env(os.environ if env is None else env)
    app_id = e.text("IOT_BACKEND_APP_ID")
    if not is_id(app_id):
        raise ConfigError("IOT_BACKEND_APP_ID", f"{app_id!r} must match {ID_PATTERN.pattern}")
    source_topic = e.text("IOT_BACKEND_SOURCE_TOPIC")
    if not re.match(r"^[A-Za-z0-9._-]{1,200}$", source_topic):
        raise ConfigError("IOT_BACKEND_SOURCE_TOPIC", f"{source_topic!r} is not a valid Kafka topic name")
    mongo_uri = e.text("IOT_MONGO_URI")
    if not mongo_uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("IOT_MONGO_URI", "must start with mongodb:// or mongodb+srv://")
    offset_reset = e.text("IOT_BACKEND_OFFSET_RESET")
    if offset_reset not in ("earliest", "latest"):
        raise ConfigError("IOT_BACKEND_OFFSET_RESET", f"{offset_reset!r} must be earliest or latest")
    tumbling = e.integer("IOT_WINDOW_TUMBLING_S", 1)
    hopping = e.integer("IOT_WINDOW_HOPPING_S", 1)
    step = e.integer("IOT_WINDOW_HOP_STEP_S", 1)
    if step > hopping or hopping % step:
        raise ConfigError(
            "IOT_WINDOW_HOP_STEP_S", f"{step} must divide IOT_WINDOW_HOPPING_S={hopping} and not exceed it"
        )
    event_loop = e.text("IOT_BACKEND_EVENT_LOOP")
    if event_loop not in EVENT_LOOPS:
        raise ConfigError("IOT_BACKEND_EVENT_LOOP", f"{event_loop!r} must be one of {', '.join(EVENT_LOOPS)}")
    settings = Settings(
        kafka_bootstrap=e.text("IOT_KAFKA_BOOTSTRAP"),
        mongo_uri=mongo_uri,
        tumbling_s=tumbling,
        hopping_s=hopping,
        hop_step_s=step,
        grace_s=e.integer("IOT_WINDOW_GRACE_S", 0),
        app_id=app_id,
        source_topic=source_topic,
        metrics_port=e.integer("IOT_BACKEND_METRICS_PORT", 0, 65535),
        web_port=e.integer("IOT_BACKEND_WEB_PORT", 0, 65535),
        idle_timeout_s=e.number("IOT_BACKEND_IDLE_TIMEOUT_S", 0.1),
        data_dir=e.text("IOT_BACKEND_DATA_DIR"),
        offset_reset=offset_reset,
        batch_max=e.integer("IOT_BACKEND_BATCH_MAX", 1),
        batch_within_ms=e.integer("IOT_BACKEND_BATCH_WITHIN_MS", 1),
        tick_s=e.number("IOT_BACKEND_TICK_S", 0.05),
        commit_interval_s=e.number("IOT_BACKEND_COMMIT_INTERVAL_S", 0.1),
        # Kafka refuses sessions under its group.min.session.timeout.ms (6 s by default).
        session_timeout_s=e.number("IOT_BACKEND_SESSION_TIMEOUT_S", 6.0),
        open_write_s=e.number("IOT_BACKEND_OPEN_WRITE_S", 0.0),
        allowed_lateness_s=e.integer("IOT_WINDOW_ALLOWED_LATENESS_S", 0),
        max_clock_ahead_s=e.integer("IOT_MAX_CLOCK_AHEAD_S", 0),
        event_loop=event_loop,
        metrics_host=e.text("IOT_BACKEND_METRICS_HOST"),
    )
    return settings

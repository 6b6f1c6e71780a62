"""What the gateway knows about each board, exported per (place, device) for alerts and dashboards:

    iot_gateway_device_online{place, device}                        1/0 from the retained status topic
    iot_gateway_device_last_reading_timestamp_seconds{place, device} when the last valid reading came
    iot_gateway_device_health{place, device, field}                 numbers of the retained health
                                                                    message (contract revision 2)

Updated with plain dict writes on the hot path; rendered only when Prometheus scrapes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from iot import contract, log

__all__ = ["DeviceBoard", "health_filter", "health_numbers", "status_filter"]

_log = log.get("gateway.devices")
# A board in safe mode is connected only long enough to say so and measures nothing: not online.
_STATUS_VALUE = {contract.STATUS_ONLINE: 1.0, contract.STATUS_OFFLINE: 0.0, contract.STATUS_SAFE_MODE: 0.0}


# A health message is a small JSON object; anything bigger is not one and is not parsed.
_HEALTH_MAX_BYTES = 4096


def status_filter(reading_filter: str) -> str:
    """The status topics of the boards whose readings `reading_filter` covers."""
    return _sibling_filter(reading_filter, "status", contract.STATUS_SUBSCRIPTION)


def health_filter(reading_filter: str) -> str:
    """The health topics of the boards whose readings `reading_filter` covers."""
    return _sibling_filter(reading_filter, "health", contract.HEALTH_SUBSCRIPTION)


def _sibling_filter(reading_filter: str, kind: str, default: str) -> str:
    suffix = "/reading"
    if reading_filter.endswith(suffix):
        return f"{reading_filter[: -len(suffix)]}/{kind}"
    return default


def _board(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) != 4 or not all(contract.ID_PATTERN.match(p) for p in parts[1:3]):
        return None
    return parts[1], parts[2]


def health_numbers(obj: object) -> dict[str, float]:
    """The numeric fields of a health message (booleans as 0/1, nested counters as `a_b`)."""
    out: dict[str, float] = {}
    if not isinstance(obj, dict):
        return out
    for name in contract.HEALTH_FIELDS:
        value = obj.get(name)
        if isinstance(value, dict):
            for sub, inner in value.items():
                number = _number(inner)
                if isinstance(sub, str) and contract.ID_PATTERN.match(sub) and number is not None:
                    out[f"{name}_{sub}"] = number
        else:
            number = _number(value)
            if number is not None:
                out[name] = number
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


class DeviceBoard(Collector):
    def __init__(self) -> None:
        self._online: dict[tuple[str, str], float] = {}
        self._last_reading: dict[tuple[str, str], float] = {}
        self._health: dict[tuple[str, str], dict[str, float]] = {}

    def reading(self, reading_topic: str, received_at: float) -> None:
        """A valid reading arrived on `reading_topic` (its ids are already validated)."""
        parts = reading_topic.split("/")
        self._last_reading[(parts[1], parts[2])] = received_at

    def health(self, topic: str, payload: bytes) -> None:
        key = _board(topic)
        if key is None:
            return
        if not payload:
            self._health.pop(key, None)
            return
        try:
            numbers = health_numbers(json.loads(payload)) if len(payload) <= _HEALTH_MAX_BYTES else {}
        except ValueError:
            numbers = {}
        if not numbers:
            _log.debug("health_ignored", topic=topic, payload=payload[:32])
            return
        self._health[key] = numbers

    def status(self, topic: str, payload: bytes) -> None:
        key = _board(topic)
        if key is None:
            _log.debug("status_ignored", topic=topic, payload=payload[:32])
            return
        if not payload:
            # A cleared retained status: the board was retired, so its series goes away.
            self._online.pop(key, None)
            return
        value = _STATUS_VALUE.get(payload.decode("utf-8", errors="replace").strip())
        if value is None:
            _log.debug("status_ignored", topic=topic, payload=payload[:32])
            return
        self._online[key] = value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        online = GaugeMetricFamily(
            "iot_gateway_device_online",
            "1 if the board's retained status is online, 0 if offline (last will or clean stop)",
            labels=["place", "device"],
        )
        for (place, device), value in list(self._online.items()):
            online.add_metric([place, device], value)
        last = GaugeMetricFamily(
            "iot_gateway_device_last_reading_timestamp_seconds",
            "Epoch seconds when this gateway last received a valid reading from the board",
            labels=["place", "device"],
        )
        for (place, device), value in list(self._last_reading.items()):
            last.add_metric([place, device], value)
        health = GaugeMetricFamily(
            "iot_gateway_device_health",
            "Numbers from the board's retained health message (booleans as 0/1)",
            labels=["place", "device", "field"],
        )
        for (place, device), numbers in list(self._health.items()):
            for name, value in numbers.items():
                health.add_metric([place, device, name], value)
        yield online
        yield last
        yield health

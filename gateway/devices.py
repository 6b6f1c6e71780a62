"""What the gateway knows about each board, exported per (place, device) for alerts and dashboards:

    iot_gateway_device_online{place, device}                        1/0 from the retained status topic
    iot_gateway_device_last_reading_timestamp_seconds{place, device} when the last valid reading came
    iot_gateway_device_health{place, device, field}                 numbers of the retained health
                                                                    message (contract revision 2)
    iot_gateway_device_firmware{place, device, fw, update_state}    1: the firmware version and
                                                                    over-the-air update state its
                                                                    health says (the Fleet dashboard)

Updated with plain dict writes on the hot path; rendered only when Prometheus scrapes. A status or
health message this cannot use is ignored, and `status`/`health` say why (a stable reason, counted
and logged by the MQTT side); nothing a board publishes may raise out of here into paho's thread.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from iot import contract

__all__ = [
    "IGNORED_HEALTH",
    "IGNORED_STATUS",
    "DeviceBoard",
    "health_filter",
    "health_numbers",
    "status_filter",
]

# A board in safe mode is connected only long enough to say so and measures nothing: not online.
_STATUS_VALUE = {contract.STATUS_ONLINE: 1.0, contract.STATUS_OFFLINE: 0.0, contract.STATUS_SAFE_MODE: 0.0}


# A health message is a small JSON object; anything bigger is not one and is not parsed.
_HEALTH_MAX_BYTES = 4096

# A firmware version as a label value: what `iot ota build` stamps (numbers and dots) and a little
# more; anything else from a board is not a version and becomes "unknown", so a hostile board cannot
# write free text (or unbounded label values) into Prometheus.
_FW_LABEL = re.compile(r"[0-9A-Za-z._+-]{1,32}")

# Integers beyond this do not convert to a float.
_FLOAT_INT_LIMIT = 2**1023

# Why a status or health message was ignored (stable: iot_gateway_ignored_total{reason}).
IGNORED_STATUS = (contract.REASON_BAD_ID, "unknown_status")
IGNORED_HEALTH = (
    contract.REASON_BAD_ID,
    contract.REASON_TOO_LARGE,
    contract.REASON_MALFORMED_JSON,
    contract.REASON_NOT_OBJECT,
    "no_numbers",
)


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
    if len(parts) != 4 or not (contract.is_id(parts[1]) and contract.is_id(parts[2])):
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
                if contract.is_id(sub) and number is not None:
                    out[f"{name}_{sub}"] = number
        else:
            number = _number(value)
            if number is not None:
                out[name] = number
    return out


def _firmware_labels(obj: dict[str, object]) -> tuple[str, str]:
    fw, state = obj.get("fw"), obj.get(contract.HEALTH_UPDATE_STATE, "idle")
    return (
        fw if isinstance(fw, str) and _FW_LABEL.fullmatch(fw) else "unknown",
        state if isinstance(state, str) and state in contract.UPDATE_STATES else "unknown",
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        # A 400-digit integer is valid JSON and does not fit a float (OverflowError).
        return float(value) if -_FLOAT_INT_LIMIT < value < _FLOAT_INT_LIMIT else None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


class DeviceBoard(Collector):
    def __init__(self) -> None:
        self._online: dict[tuple[str, str], float] = {}
        self._last_reading: dict[tuple[str, str], float] = {}
        self._health: dict[tuple[str, str], dict[str, float]] = {}
        self._firmware: dict[tuple[str, str], tuple[str, str]] = {}  # (fw, update_state)

    def reading(self, reading_topic: str, received_at: float) -> None:
        """A valid reading arrived on `reading_topic` (its ids are already validated, and the parse
        cached by that)."""
        ids = contract.parse_reading_topic(reading_topic)
        self._last_reading[(ids.place, ids.device)] = received_at

    def health(self, topic: str, payload: bytes) -> str | None:
        """Take a health message; None, or why it was ignored (one of IGNORED_HEALTH)."""
        key = _board(topic)
        if key is None:
            return contract.REASON_BAD_ID
        if not payload:
            self._health.pop(key, None)
            self._firmware.pop(key, None)
            return None
        if len(payload) > _HEALTH_MAX_BYTES:
            return contract.REASON_TOO_LARGE
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            # RecursionError: `[` x 3,000 fits in 4 KiB and exceeds json's recursion (issue #19: it
            # escaped into paho's network thread and stopped the gateway for good).
            return contract.REASON_MALFORMED_JSON
        if not isinstance(obj, dict):
            return contract.REASON_NOT_OBJECT
        numbers = health_numbers(obj)
        if not numbers:
            return "no_numbers"
        self._health[key] = numbers
        self._firmware[key] = _firmware_labels(obj)
        return None

    def status(self, topic: str, payload: bytes) -> str | None:
        """Take a status message; None, or why it was ignored (one of IGNORED_STATUS)."""
        key = _board(topic)
        if key is None:
            return contract.REASON_BAD_ID
        if not payload:
            # A cleared retained status: the board was retired, so its series goes away.
            self._online.pop(key, None)
            return None
        value = _STATUS_VALUE.get(payload.decode("utf-8", errors="replace").strip())
        if value is None:
            return "unknown_status"
        self._online[key] = value
        return None

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
        firmware = GaugeMetricFamily(
            "iot_gateway_device_firmware",
            "1 per board: its firmware version and over-the-air update state (idle when it has none)",
            labels=["place", "device", "fw", "update_state"],
        )
        for (place, device), (fw, state) in list(self._firmware.items()):
            firmware.add_metric([place, device, fw, state], 1.0)
        yield online
        yield last
        yield health
        yield firmware

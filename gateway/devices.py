"""What the gateway knows about each board, exported per (place, device) for alerts and dashboards:

    iot_gateway_device_online{place, device}                        1/0 from the retained status topic
    iot_gateway_device_last_reading_timestamp_seconds{place, device} when the last valid reading came

Updated with plain dict writes on the hot path; rendered only when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from iot import contract, log

__all__ = ["DeviceBoard", "status_filter"]

_log = log.get("gateway.devices")
_STATUS_VALUE = {contract.STATUS_ONLINE: 1.0, contract.STATUS_OFFLINE: 0.0}


def status_filter(reading_filter: str) -> str:
    """The status topics of the boards whose readings `reading_filter` covers."""
    suffix = "/reading"
    if reading_filter.endswith(suffix):
        return reading_filter[: -len(suffix)] + "/status"
    return contract.STATUS_SUBSCRIPTION


class DeviceBoard(Collector):
    def __init__(self) -> None:
        self._online: dict[tuple[str, str], float] = {}
        self._last_reading: dict[tuple[str, str], float] = {}

    def reading(self, reading_topic: str, received_at: float) -> None:
        """A valid reading arrived on `reading_topic` (its ids are already validated)."""
        parts = reading_topic.split("/")
        self._last_reading[(parts[1], parts[2])] = received_at

    def status(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or not all(contract.ID_PATTERN.match(p) for p in parts[1:3]):
            _log.debug("status_ignored", topic=topic, payload=payload[:32])
            return
        key = (parts[1], parts[2])
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
        yield online
        yield last

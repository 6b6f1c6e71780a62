"""The gateway client's reads from the broker's socket, 64 KiB at a time.

Stock paho reads an incoming PUBLISH through 2-3 `recv` calls (command byte, length byte, body), one
`select` per packet (measured with bench/gateway_throughput.py --profile: most of a gateway's time
in system calls). Here paho's `_sock_recv` hands out slices of one 64 KiB read; gateway/paho_client.py
takes a PUBLISH already whole in the buffer in one slice. A layer of gateway/paho_client.py's client.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

from .batched_writes import BatchedWritesClient
from .mqtt_packets import require_paho

__all__ = ["BufferedReadClient"]

require_paho(("_sock_recv", "_easy_log"), "gateway/read_buffer.py (BufferedReadClient)")

READ_CHUNK = 65536


class BufferedReadClient(BatchedWritesClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:
            # A new connection: bytes buffered from the old socket must never be parsed as its own.
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        if self._rpos >= len(self._rbuf):
            data: bytes = super()._sock_recv(READ_CHUNK)
            if not data:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def _fill(self) -> mqtt.MQTTErrorCode | None:
        """Read one chunk into the (consumed) buffer; None once bytes are there, else the code paho's
        _packet_read gives for the same outcome of its own read."""
        try:
            data: bytes = super()._sock_recv(READ_CHUNK)
        except BlockingIOError:
            return mqtt.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return mqtt.MQTT_ERR_CONN_LOST
        if not data:
            return mqtt.MQTT_ERR_CONN_LOST
        self._rsock, self._rbuf, self._rpos = self._sock, data, 0
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return None

    def _buffered(self) -> bool:
        return self._sock is not None and self._sock is self._rsock and self._rpos < len(self._rbuf)

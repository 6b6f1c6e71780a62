"""One MQTT client on a broker with accounts, keeping every answer it got (CONNACK, SUBACKs, PUBACKs,
messages, disconnects): what the ACL and provisioning tests assert on. Refused at CONNACK, it stays
refused: no reconnect attempts behind the test's back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from iot.broker.credentials import Credentials
from tests.support import wait_for

__all__ = ["Peer", "refused"]


class Peer:
    def __init__(
        self,
        port: int,
        login: Credentials | None,
        client_id: str = "",
        ca: Path | None = None,
        clean_start: bool = True,
        protocol: int = mqtt.MQTTv5,
    ) -> None:
        """`protocol` MQTTv311 is a board's session as the firmware opens it (client id = device id);
        `clean_start` applies to MQTT v5 only."""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if login is not None:
            self.client.username_pw_set(login.username, login.password)
        self.connack: list[ReasonCode] = []
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[ReasonCode] = []
        self.disconnected_at: list[float] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, list(rcs))
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 2)
        if protocol == mqtt.MQTTv5:
            self.client.connect("127.0.0.1", port, clean_start=clean_start)
        else:
            self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(lambda: self.connack, 5, f"CONNACK for {client_id or 'a client'}")

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self.connack.append(reason)
        if reason.is_failure:
            client.disconnect()  # no reconnect attempts (and no second's wait for one in close())

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        self.disconnects.append(reason)
        self.disconnected_at.append(time.monotonic())

    @property
    def accepted(self) -> bool:
        """The broker's first answer: logged in."""
        return not self.connack[0].is_failure

    def subscribe(self, *topics: str, qos: int = 1) -> list[ReasonCode]:
        _rc, mid = self.client.subscribe([(t, qos) for t in topics])
        return wait_for(lambda: self.subacks.get(mid), 5, f"SUBACK for {topics}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        return wait_for(lambda: self.pubacks.get(mid), 5, f"PUBACK for {topic}")

    def round_trip(self) -> None:
        """A SUBSCRIBE answered on this connection (refused or not, to a topic no one uses): the broker
        handles a connection's packets in order, so whatever it did to this connection before (a
        disconnect after an account change) has reached this client by the time the SUBACK does. Returns
        once one of them came; the caller asserts on `disconnects`."""
        _rc, mid = self.client.subscribe(f"barrier/{uuid.uuid4().hex}", qos=0)
        wait_for(lambda: mid in self.subacks or self.disconnects, 5, "a SUBACK or a disconnect")

    def topics(self) -> set[str]:
        return {t for t, _p in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def refused(codes: list[ReasonCode]) -> bool:
    return all(c.is_failure for c in codes)

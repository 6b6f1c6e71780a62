"""The hostile board of bench/soak.py (fault `hostile`, issue #19): one MQTT client that publishes,
on its own topics only (what the compose ACL lets a board do), everything that broke the pipeline,
while the fleet's good boards run.

  * bad retained health: `[` x 3,000 (json's RecursionError), a 400-digit integer (OverflowError),
    a user property holding U+FEFF (paho refuses the packet); they stay retained for the rest of the
    soak, so every later gateway restart and broker restart meets them again;
  * bad status: an unknown word, random bytes;
  * poison readings: a lone surrogate in `fw`, nesting to 1,000, ids with a line break, `$`, `.`,
    `ë` and U+FEFF, a 60 KB topic level, NaN, a 31-digit seq, wrong types, UTF-16, a CESU-8 surrogate,
    QoS 0 and 2, and 10 MB the broker refuses (on a connection of its own, which it drops);
  * valid readings with oddities the contract allows (U+FEFF user property, QoS 2, NUL and emoji in
    `fw`, extra fields, whitespace), one of them retained: Mosquitto 2.0.11 sends that stored copy to
    the gateways' shared subscription again at every reconnect;
  * a burst of garbage: `burst` random payloads as fast as the broker takes them.

Its valid readings are in place HOSTILE_PLACE with boot HOSTILE_BOOT and are accounted apart (each
must be stored once); its windows are not checked against the fleet's."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from soak_common import log

from iot import contract

HOSTILE_PLACE = "hostile"
HOSTILE_DEVICE = "hostile-1"
HOSTILE_BOOT = 66
_WINDOW = 200  # publishes awaiting PUBACK at once


def _feff() -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("note", "\ufeff")
    return props


class HostileBoard:
    def __init__(
        self, host: str, port: int, burst: int, seed: int = 19, login: tuple[str, str] | None = None
    ) -> None:
        """`login`: the account it connects with. The soak gives it the operator's: a board's own
        account would have the broker refuse most of this at the door (its ACL, proven in
        tests/compose/test_mosquitto_acl.py), and this is about what reaches the gateway."""
        self.host, self.port, self.burst = host, port, burst
        self.login = login
        self.rng = random.Random(seed)
        self.valid: list[int] = []  # seqs of its valid readings
        self.sent: dict[str, int] = {}
        self.retained_topics: set[str] = set()
        self._seq = 0
        self._client = self._connect("hostile")

    def _connect(self, suffix: str) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{HOSTILE_DEVICE}-{suffix}", protocol=mqtt.MQTTv5
        )
        client.max_inflight_messages_set(_WINDOW)
        if self.login is not None:
            client.username_pw_set(*self.login)
        client.connect(self.host, self.port)
        client.loop_start()
        deadline = time.monotonic() + 10
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        return client

    # --- what it publishes ----------------------------------------------------------------------

    def reading(self, **over: Any) -> dict[str, Any]:
        self._seq += 1
        return {
            "v": 1,
            "device": HOSTILE_DEVICE,
            "place": HOSTILE_PLACE,
            "boot": HOSTILE_BOOT,
            "seq": self._seq,
            "ts": int(time.time() * 1000),
            "time_valid": True,
            "temperature": 21.0,
            "humidity": 40.0,
            "pressure": 1000.0,
            "luminosity": 10.0,
            "fw": "hostile",
            **over,
        }

    def _publish(
        self,
        kind: str,
        payload: bytes | dict[str, Any],
        topic: str | None = None,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        valid: bool = False,
    ) -> mqtt.MQTTMessageInfo:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        topic = topic or contract.reading_topic(HOSTILE_PLACE, HOSTILE_DEVICE)
        if valid:
            self.valid.append(json.loads(raw)["seq"])
        if retain:
            self.retained_topics.add(topic)
        self.sent[kind] = self.sent.get(kind, 0) + 1
        return self._client.publish(topic, raw, qos=qos, retain=retain, properties=properties)

    def attack(self) -> None:
        """The fixed set, then the burst; returns once the broker acknowledged everything."""
        place, device = HOSTILE_PLACE, HOSTILE_DEVICE
        health, status = contract.health_topic(place, device), contract.status_topic(place, device)
        health2 = contract.health_topic(place, "hostile-2")
        health3 = contract.health_topic(place, "hostile-3")
        r, rng, p = self.reading, self.rng, self._publish
        infos = [
            p("health", b"[" * 3000, health, retain=True),
            p("health", b'{"uptime_s": 1' + b"0" * 400 + b"}", health2, retain=True),
            p("health", b'{"uptime_s": 5}', health3, retain=True, properties=_feff()),
            p("status", b"rebooting", status),
            p("status", rng.randbytes(100), status),
            p("poison", json.dumps(r(fw="X")).replace('"X"', '"\\ud800"').encode()),
            p("poison", b"[" * 1000),
            p("poison", r(device=device + "\n")),
            p("poison", r(place=place + "\r\n")),
            p("poison", json.dumps(r(humidity=12.25)).replace("12.25", "NaN").encode()),
            p("poison", json.dumps(r()).replace('"seq": ', '"seq": 1' + "0" * 30).encode()),
            p("poison", r(temperature="21.5")),
            p("poison", r(seq=1.5)),
            p("poison", b"\xff\xfe" + json.dumps(r()).encode("utf-16-le")),
            p("poison", b"\xed\xa0\x80" + json.dumps(r()).encode()),
            p("poison", r(), topic=f"sensors/{place}/dev$1/reading"),
            p("poison", r(), topic=f"sensors/{place}/dev.1/reading"),
            p("poison", r(), topic=f"sensors/{place}/d\u00ebv/reading"),
            p("poison", r(), topic=f"sensors/{place}/\ufeff/reading"),
            p("poison", r(), topic=f"sensors/{place}/{'x' * 60_000}/reading"),
            p("poison", rng.randbytes(200), qos=0),
            p("poison", rng.randbytes(200), qos=2),
            p("valid", r(), properties=_feff(), valid=True),
            p("valid", r(), qos=2, valid=True),
            p("valid", {**r(), "extra": [1, None], "fw": "nul\u0000\u00e9\U0001f600"}, valid=True),
            p("valid", b"  \n" + json.dumps(r()).encode() + b"\t ", valid=True),
            p("valid", r(), retain=True, valid=True),
        ]
        # Beyond the broker's max_packet_size: it drops this connection (the board's own problem).
        big = self._connect("big")
        big.publish(contract.reading_topic(place, device), b"x" * 10_000_000, qos=1)
        self.sent["10MB"] = 1
        for i in range(self.burst):
            infos.append(p("burst", rng.randbytes(rng.randrange(0, 1500)), qos=rng.choice((0, 1, 1, 2))))
            if len(infos) >= _WINDOW:
                self._wait(infos)
                infos = []
            if i % 500 == 0:
                log("hostile_burst", sent=i)
        self._wait(infos)
        big.loop_stop()
        log("hostile_done", sent=self.sent, valid=len(self.valid))

    def _wait(self, infos: list[mqtt.MQTTMessageInfo]) -> None:
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        # The retained messages stay: later restarts of the gateways and the broker meet them.
        self._client.disconnect()
        self._client.loop_stop()


def run_in_thread(board: HostileBoard) -> threading.Thread:
    thread = threading.Thread(target=board.attack, name="hostile", daemon=True)
    thread.start()
    return thread

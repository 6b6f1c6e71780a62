"""What Mosquitto's persistence costs, and what it keeps through a SIGKILL (issue 13).

The alternative to the end-to-end ack: make the broker's PUBACK mean "kept" by saving its in-memory
database often. Mosquitto writes the WHOLE database (sessions, subscriptions, queued and retained
messages) at every save: every `autosave_interval` seconds, or, with `autosave_on_changes true`,
after that many changes.

    .venv/bin/python bench/mosquitto_persistence.py [--messages 20000] [--backlog 5000]

For each setting, on a private Mosquitto 2.0 (persistence on, the stack's queue limits):
  standing (--standing N): first N readings queued for another session that stays away (a gateway
           down with its backlog): every save writes them again;
  live:    a QoS 1 publisher (window 100) and a persistent-session QoS 1 subscriber on the shared
           subscription, in two processes: end-to-end rate and the broker's CPU per 10k messages;
  backlog: the subscriber away (its session kept), `--backlog` readings published and PUBACKed, then
           the broker is SIGKILLed at once and restarted; how many of them the subscriber gets after.
Nothing here runs on the shared stack.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from iot.harness.broker import PrivateBroker
from iot.harness.children import cpu_s

HOST = "127.0.0.1"
SETTINGS: dict[str, str] = {
    "interval 1800 (Mosquitto's default)": "autosave_interval 1800",
    "interval 30 (our stack, compose)": "autosave_interval 30",
    "interval 5": "autosave_interval 5",
    "interval 1": "autosave_interval 1",
    "on changes, every 1000": "autosave_on_changes true\nautosave_interval 1000",
    "on changes, every 100": "autosave_on_changes true\nautosave_interval 100",
    "on changes, every 1": "autosave_on_changes true\nautosave_interval 1",
}
PAYLOAD = (
    '{"v":1,"device":"dev%05d","place":"%s","boot":1,"seq":%d,"ts":1764600000000,"time_valid":true,'
    '"temperature":21.5,"humidity":40.25,"pressure":1013.2,"luminosity":120.0,"fw":"bench-1.0"}'
)  # about 190 bytes, like a reading
TOPIC_FILTER = "$share/bench/sensors/+/+/reading"


class Broker(PrivateBroker):
    """The harness's private Mosquitto (persistence on, the stack's queue limits) with one save
    setting."""

    def __init__(self, folder: Path, setting: str) -> None:
        super().__init__(folder, listener_conf=f"allow_anonymous true\n{setting}\n", persistent=True)

    def db_bytes(self) -> int:
        db = self.folder / "mosquitto.db"
        return db.stat().st_size if db.exists() else 0


# --- the client roles, each in its own process ------------------------------------------------


def role_pub(port: int, count: int, tag: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(100)
    acked = [0]
    client.on_publish = lambda *_a: acked.__setitem__(0, acked[0] + 1)
    client.connect(HOST, port)
    client.loop_start()
    t0 = time.monotonic()
    for i in range(count):
        payload = (PAYLOAD % (i % 2000, tag, i)).encode()
        while client.publish(f"sensors/{tag}/dev{i % 2000:05d}/reading", payload, qos=1).rc != 0:
            time.sleep(0.001)  # paho's queue is full: the only way to wait on it
    while acked[0] < count and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"acked": acked[0], "s": time.monotonic() - t0}), flush=True)


def role_sub(port: int, count: int, idle_s: float, tag: str, client_id: str, topic_filter: str) -> None:
    """Subscribe with a persistent session; print when subscribed, then how many distinct readings of
    the run `tag` arrived once `count` did or nothing came for `idle_s`."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    got = [0, time.monotonic()]
    seen: set[int] = set()
    prefix = f"sensors/{tag}/"

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got[1] = time.monotonic()
        if msg.topic.startswith(prefix):
            seen.add(json.loads(msg.payload)["seq"])
            got[0] = len(seen)

    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(topic_filter, qos=1)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(HOST, port, clean_start=False, properties=props)
    client.loop_start()
    if not subscribed.wait(30):
        raise SystemExit("no SUBACK in 30 s")
    print(json.dumps({"subscribed": True}), flush=True)
    t0 = got[1] = time.monotonic()
    while got[0] < count and time.monotonic() - got[1] < idle_s:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"received": got[0], "s": elapsed}), flush=True)


def _client(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
    )


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"client {proc.args} ended without output")
    out: dict[str, Any] = json.loads(line)
    return out


def measure(folder: Path, setting: str, messages: int, backlog: int, standing: int) -> dict[str, Any]:
    broker = Broker(folder, setting)
    broker.start()
    try:
        if standing:
            # A session that is away with its queue (a gateway down, say): every save writes it again.
            idle = _client("sub", str(broker.port), "0", "0", "standing", "bench-away", "sensors/standing/#")
            _line(idle), _line(idle), idle.wait()
            pub = _client("pub", str(broker.port), str(standing), "standing")
            _line(pub), pub.wait()
        # live: subscriber on, publisher sends
        sub = _client("sub", str(broker.port), str(messages), "5", "live", "bench-sub", TOPIC_FILTER)
        _line(sub)
        cpu0, t0 = (cpu_s(broker.pid) or 0.0), time.monotonic()
        pub = _client("pub", str(broker.port), str(messages), "live")
        _line(pub)
        got = _line(sub)
        elapsed = time.monotonic() - t0
        cpu = (cpu_s(broker.pid) or 0.0) - cpu0
        pub.wait(), sub.wait()
        # backlog: subscriber away (session kept), publish, SIGKILL at once, restart, count
        pub = _client("pub", str(broker.port), str(backlog), "backlog")
        published = _line(pub)["acked"]
        pub.wait()
        db_before_kill = broker.db_bytes()
        broker.kill()
        broker.start()
        sub = _client("sub", str(broker.port), str(backlog), "3", "backlog", "bench-sub", TOPIC_FILTER)
        _line(sub)
        kept = _line(sub)["received"]
        sub.wait()
        return {
            "setting": setting.replace("\n", "; "),
            "live_received": got["received"],
            "live_per_s": round(got["received"] / elapsed),
            "broker_cpu_s_per_10k": round(cpu / max(1, got["received"]) * 10_000, 3),
            "backlog_published": published,
            "backlog_kept_after_sigkill": kept,
            "db_bytes_before_kill": db_before_kill,
            "standing_queue": standing,
        }
    finally:
        broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--backlog", type=int, default=5_000)
    p.add_argument(
        "--standing", type=int, default=0, help="messages queued for another, absent session meanwhile"
    )
    p.add_argument("--only", default="", help="comma list of setting numbers (1-based) to run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    chosen = [int(x) for x in args.only.split(",") if x] or list(range(1, len(SETTINGS) + 1))
    root = Path(tempfile.mkdtemp(prefix="bench-mosq-"))
    rows = []
    try:
        for i, (name, setting) in enumerate(SETTINGS.items(), 1):
            if i not in chosen:
                continue
            row = {
                "name": name,
                **measure(root / str(i), setting, args.messages, args.backlog, args.standing),
            }
            rows.append(row)
            print(
                f"{name:<38} live {row['live_per_s']:>6,}/s  "
                f"broker CPU {row['broker_cpu_s_per_10k']:6.3f} s/10k  "
                f"SIGKILL kept {row['backlog_kept_after_sigkill']:>6,} of {row['backlog_published']:,}",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pub":
        role_pub(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "sub":
        role_sub(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:8])
    else:
        sys.exit(main())

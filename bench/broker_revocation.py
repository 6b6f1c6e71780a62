"""How fast a removed board is cut off, and what provisioning costs, as the broker's accounts grow.

On a private Mosquitto with the dynamic-security plugin (as the native stack runs it): N boards are
provisioned first (their accounts fill the plugin's JSON file, which it rewrites whole on every
change), then, five times each:
- remove: a connected board's account is deleted (`accounts.delete_device`, what `iot devices remove`
  does) and the time until the board's connection is closed is taken from the board's own side;
- refused: its next login, right after, must be refused;
- add: one more board provisioned (role + account);
- baseline: a plugin command that changes nothing (getDefaultACLAccess), the same round trip.

    .venv/bin/python bench/broker_revocation.py [--boards 0,500,2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from iot.broker import accounts
from iot.broker.credentials import new_password
from iot.broker.dynsec import Dynsec
from iot.env import parse_mqtt_url
from iot.harness.broker import PrivateBroker

ROUNDS = 5


def board_session(port: int, device: str, password: str) -> tuple[mqtt.Client, threading.Event]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
    client.username_pw_set(device, password)
    up, gone = threading.Event(), threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: up.set() if not rc.is_failure else None
    client.on_disconnect = lambda *_a: gone.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not up.wait(5):
        raise SystemExit(f"{device} could not log in")
    return client, gone


def refused(port: int, device: str, password: str) -> bool:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
    client.username_pw_set(device, password)
    answer: list[bool] = []
    client.on_connect = lambda c, _u, _f, rc, _p: (answer.append(rc.is_failure), c.disconnect())
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not answer and time.monotonic() < deadline:
        time.sleep(0.01)
    client.loop_stop()
    return bool(answer and answer[0])


def fill(dynsec: Dynsec, count: int) -> float:
    started = time.monotonic()
    for i in range(count):
        accounts.create_device(dynsec, "fill", f"fill-{i:05d}", new_password())
        if (i + 1) % 250 == 0:
            print(f"  provisioned {i + 1}/{count} ({time.monotonic() - started:.0f}s)", flush=True)
    return time.monotonic() - started


def measure(boards: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        PrivateBroker(Path(tmp), accounts=True, persistent=False) as broker,
        Dynsec(parse_mqtt_url(broker.url), broker.operator, timeout=60) as dynsec,
    ):
        fill_s = fill(dynsec, boards)
        removes, adds, baselines = [], [], []
        for round_ in range(ROUNDS):
            device, password = f"target-{round_}", new_password()
            started = time.monotonic()
            accounts.create_device(dynsec, "lab", device, password)
            adds.append(time.monotonic() - started)
            client, gone = board_session(broker.port, device, password)
            started = time.monotonic()
            dynsec.call("getDefaultACLAccess")
            baselines.append(time.monotonic() - started)
            started = time.monotonic()
            accounts.delete_device(dynsec, device)
            if not gone.wait(10):
                raise SystemExit(f"{device} was not disconnected within 10 s")
            removes.append(time.monotonic() - started)
            client.loop_stop()
            if not refused(broker.port, device, password):
                raise SystemExit(f"{device} logged in again after its removal")
        size = (broker.folder / "dynamic-security.json").stat().st_size
    return {
        "boards": boards,
        "file_kb": size / 1024,
        "fill_s": fill_s,
        "remove_ms": statistics.median(removes) * 1000,
        "remove_max_ms": max(removes) * 1000,
        "add_ms": statistics.median(adds) * 1000,
        "baseline_ms": statistics.median(baselines) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--boards", default="0,500,2000", help="accounts already on the broker, comma separated"
    )
    args = parser.parse_args()
    print("boards  file KB  fill s  remove->cut ms (median/max)  add ms  baseline ms  remove/baseline")
    for count in (int(n) for n in args.boards.split(",")):
        r = measure(count)
        print(
            f"{r['boards']:>6} {r['file_kb']:>8.0f} {r['fill_s']:>7.1f} {r['remove_ms']:>14.1f} / "
            f"{r['remove_max_ms']:<10.1f} {r['add_ms']:>7.1f} {r['baseline_ms']:>12.2f} "
            f"{r['remove_ms'] / r['baseline_ms']:>15.0f}x",
            flush=True,
        )
    print(f"every removed board was refused its next login ({ROUNDS} rounds per size)")


if __name__ == "__main__":
    main()

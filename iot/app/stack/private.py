"""Private services on free ports, for whatever must not touch the shared stack: a Mosquitto that a
test, a benchmark or a rig run may stop, SIGKILL or reconfigure, a single-node Kafka of its own, a
FerretDB of its own, and the consumer-group helper that makes a reader start at a shared topic's current end.

One implementation for tests/, bench/ and hil/rig/: each used to carry its own copy."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from iot.app.stack.config import StackConfig
from iot.app.stack.manager import Stack, StackError
from iot.broker import local
from iot.broker.credentials import GATEWAY, OPERATOR, Credentials
from iot.env import MqttEndpoint
from iot.kafka import KafkaConnection

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now. All are held open together while the kernel picks them,
    so the `count` ports differ from each other."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def listening(port: int, host: str = HOST) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


class PrivateBroker:
    """A Mosquitto of its own on a free port and in its own folder; start, stop (SIGTERM) or kill
    (SIGKILL) at will.

    `listener_conf` goes under the listener (authentication, ACL, TLS files; anonymous by default);
    `tls` only changes `url`. `accounts`: authenticated like the native stack's broker, the
    dynamic-security plugin with the operator and gateway accounts (`operator`, `gateway`; `ca`
    verifies a TLS-only broker for setting them up). `persistent`: sessions and their queued QoS 1
    messages survive a clean restart, as the gateway's must. Queue limits are raised like the stack
    broker's: the default 1000 queued messages per session would drop most of an outage (FACTS.md).
    `preexec_fn` runs in the child before exec (e.g. a parent-death signal, so a killed rig leaves no
    broker behind)."""

    def __init__(
        self,
        folder: Path,
        listener_conf: str | None = None,
        tls: bool = False,
        persistent: bool = True,
        preexec_fn: Callable[[], None] | None = None,
        accounts: bool = False,
        ca: Path | None = None,
    ) -> None:
        (self.port,) = free_ports(1)
        self.folder = folder
        self.tls = tls
        self._ca = ca
        self._preexec_fn = preexec_fn
        folder.mkdir(parents=True, exist_ok=True)
        self.logins: dict[str, Credentials] = {}
        if accounts:
            dynsec_file = folder / local.DYNSEC_FILE
            self.logins = local.prepare_accounts(dynsec_file, folder / "credentials.json")
            listener_conf = local.plugin_conf(dynsec_file) + (listener_conf or "")
        elif listener_conf is None:
            listener_conf = "allow_anonymous true\n"
        self.conf = folder / "mosquitto.conf"
        lines = [
            # Started as root, mosquitto would drop to its own user, which cannot write to our folder.
            f"user {getpass.getuser()}",
            f"listener {self.port} {HOST}",
            listener_conf.rstrip("\n"),
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 1000",
            # As the stack's broker: without it a reply after a PUBACK waits for the peer's delayed
            # ACK (~40 ms a plugin command round trip, measured; 0.25 ms with it).
            "set_tcp_nodelay true",
            f"log_dest file {folder}/mosquitto.log",
        ]
        if persistent:
            lines += ["persistence true", f"persistence_location {folder}/"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    @property
    def operator(self) -> Credentials:
        return self.logins[OPERATOR]

    @property
    def gateway(self) -> Credentials:
        return self.logins[GATEWAY]

    def start(self, timeout: float = 15.0) -> None:
        if not os.path.exists(MOSQUITTO):
            raise StackError(f"{MOSQUITTO} missing: `iot stack install` installs mosquitto")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=self._preexec_fn,
        )
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None:
                raise StackError(
                    f"private mosquitto exited with {self.proc.returncode}; its log:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"private mosquitto did not listen on {self.port} in {timeout:.0f}s; see {self.conf}"
                )
            time.sleep(0.05)
        if self.logins:
            endpoint = MqttEndpoint(HOST, self.port, self.tls)
            local.ensure_accounts(endpoint, self.logins, str(self._ca) if self._ca else None)

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves sessions and queued messages to its persistence file first."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL: what is only in Mosquitto's memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return (self.folder / "mosquitto.log").read_text(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.kill()


@contextmanager
def private_services(folder: Path, names: list[str], variables: dict[str, str]) -> Iterator[Stack]:
    """Services of the stack of their own (state under `folder`, ports from `variables`) that the
    caller may stop, kill and start through the yielded `Stack`; stopped on exit."""
    env = {
        "IOT_STACK_DIR": str(folder),
        # Programs are fetched and built once per machine, into the shared cache, not per stack.
        "IOT_CACHE_DIR": os.environ.get("IOT_CACHE_DIR", ""),
        **variables,
    }
    stack = Stack(StackConfig.from_env(env))
    stack.up(names)
    try:
        yield stack
    finally:
        stack.down(names)


@contextmanager
def private_kafka(folder: Path, heap: str = "256m") -> Iterator[Stack]:
    """A single-node KRaft Kafka of its own (free ports, state under `folder`)."""
    client_port, controller_port = free_ports(2)
    with private_services(
        folder,
        ["kafka"],
        {
            "IOT_KAFKA_BOOTSTRAP": f"{HOST}:{client_port}",
            "IOT_KAFKA_CONTROLLER_PORT": str(controller_port),
            "IOT_KAFKA_HEAP": heap,
        },
    ) as stack:
        yield stack


@contextmanager
def private_ferretdb(folder: Path) -> Iterator[Stack]:
    """A FerretDB of its own (the stack's build, free ports, its SQLite files under `folder`). Its
    MongoDB URI is `stack.cfg.mongo_uri`."""
    mongo_port, debug_port = free_ports(2)
    with private_services(
        folder,
        ["ferretdb"],
        {"IOT_MONGO_URI": f"mongodb://{HOST}:{mongo_port}/iot", "IOT_FERRETDB_DEBUG_PORT": str(debug_port)},
    ) as stack:
        yield stack


def commit_end_offsets(kafka: KafkaConnection | str, group: str, topic: str) -> None:
    """Commit a topic's current end offsets for a new consumer group, so a consumer joining it starts
    exactly here: on the shared stack, topics hold other runs' history that must not be replayed.
    A bare bootstrap string means a PLAINTEXT connection."""
    from confluent_kafka import Consumer, TopicPartition

    conn = KafkaConnection(kafka) if isinstance(kafka, str) else kafka
    consumer = Consumer({**conn.librdkafka(), "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [
            TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in parts
        ]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()

"""The stack a rig run drives its boards against: a private Mosquitto (so `broker_restart` never
touches a shared broker), the product's gateway and backend started as users start them (`iot
gateway`, `iot backend`), the shared Kafka and MongoDB (a database per run), and the readers the
expectations use: an MQTT probe, a Kafka reader of `iot.readings`, the MongoDB database."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
from confluent_kafka import Consumer, KafkaException, TopicPartition

from hil.errors import HilError
from hil.probe import Probe, broker_address
from hil.rig.spec import Rig
from hil.serial_board import die_with_parent
from iot import contract, log
from iot.app.stack.private import PrivateBroker, commit_end_offsets, free_ports
from iot.app.supervise import ChildFailed, Supervisor, endpoint_up, metrics_value
from iot.env import with_database
from iot.kafka import KafkaConnection

_log = log.get("hil.rig.stack")


class StackError(HilError):
    pass


def free_port() -> int:
    (port,) = free_ports(1)
    return port


class KafkaReadings:
    """Reads `iot.readings` from the run's start and keeps our devices' readings with their Kafka time."""

    def __init__(self, conn: KafkaConnection, devices: set[str]) -> None:
        self._devices = devices
        self._consumer = Consumer(
            {**conn.librdkafka(), "group.id": f"hil-reader-{time.time_ns()}", "enable.auto.commit": False}
        )
        topic = contract.TOPIC_READINGS
        try:
            parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
            starts = [
                TopicPartition(
                    topic, p, self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                )
                for p in parts
            ]
        except KafkaException as exc:
            raise StackError(f"cannot read {topic} from Kafka ({conn.describe()}): {exc}") from exc
        self._consumer.assign(starts)
        self._lock = threading.Lock()
        self.seen: dict[tuple[str, int, int], list[int]] = defaultdict(list)  # id -> Kafka timestamps (ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hil-kafka", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import json

        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            try:
                r = json.loads(msg.value() or b"")
                key = (str(r["device"]), int(r["boot"]), int(r["seq"]))
            except (ValueError, KeyError, TypeError):
                continue
            if key[0] in self._devices:
                with self._lock:
                    self.seen[key].append(int(msg.timestamp()[1]))

    def snapshot(self) -> dict[tuple[str, int, int], list[int]]:
        with self._lock:
            return {k: list(v) for k, v in self.seen.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class RigStack:
    def __init__(self, rig: Rig, workdir: Path, say: Callable[[str], None]) -> None:
        self.rig = rig
        self.workdir = workdir
        self.say = say
        self.tag = f"hil{rig.run_id}"
        self.broker: PrivateBroker | None = None
        self.supervisor = Supervisor(workdir / "services")
        self.broker_url = rig.stack.broker
        self.probe: Probe | None = None
        self.kafka: KafkaReadings | None = None
        self.mongo: pymongo.MongoClient[dict[str, Any]] | None = None
        self.db: Any = None
        self.own_database = ""  # the run's database, created for it (services: start)

    @property
    def broker_host_port(self) -> tuple[str, int]:
        return broker_address(self.broker_url)

    def up(self, devices: set[str]) -> None:
        spec = self.rig.stack
        if spec.broker == "private":
            # A killed rig leaves no broker behind.
            self.broker = PrivateBroker(self.workdir / "mosquitto", preexec_fn=die_with_parent)
            self.broker.start()
            self.broker_url = self.broker.url
            self.say(f"stack private mosquitto on {self.broker_url}")
        db_name = f"hil_{self.rig.run_id}" if spec.services == "start" else ""
        self.own_database = db_name
        mongo_uri = with_database(spec.mongo, db_name) if db_name else spec.mongo
        self.mongo = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        self.db = self.mongo.get_default_database(default=contract.DEFAULT_DATABASE)
        self.kafka = KafkaReadings(spec.kafka, devices)
        self.probe = Probe(
            self.broker_url,
            ["sensors/+/+/#"],
            keep=lambda t: t.split("/")[2:3] != [] and t.split("/")[2] in devices,
            session=f"{self.tag}-probe",
            username=spec.mqtt_user,
            password=spec.mqtt_password,
        ).start()
        if spec.services == "start":
            self._start_services(mongo_uri)

    def _start_services(self, mongo_uri: str) -> None:
        spec = self.rig.stack
        gw_port, be_port = free_port(), free_port()
        env = {
            "IOT_MQTT_URL": self.broker_url,
            **spec.kafka.env(),
            "IOT_MONGO_URI": mongo_uri,
            "IOT_WINDOW_TUMBLING_S": str(spec.tumbling_s),
            "IOT_WINDOW_HOPPING_S": str(spec.tumbling_s * 2),
            "IOT_WINDOW_HOP_STEP_S": str(spec.tumbling_s),
            "IOT_WINDOW_GRACE_S": str(spec.grace_s),
            "IOT_GATEWAY_GROUP": self.tag,
            "IOT_GATEWAY_CLIENT_ID": f"{self.tag}-gw",
            "IOT_GATEWAY_METRICS_PORT": str(gw_port),
            "IOT_BACKEND_APP_ID": self.tag,
            "IOT_BACKEND_METRICS_PORT": str(be_port),
            "IOT_BACKEND_IDLE_TIMEOUT_S": "3",
            "IOT_BACKEND_DATA_DIR": str(self.workdir / "backend"),
        }
        try:
            self.say("stack starting the gateway")
            gateway = self.supervisor.start("gateway", ["gateway"], env)
            url = f"http://127.0.0.1:{gw_port}/metrics"
            self.supervisor.wait_ready(
                gateway, lambda: metrics_value(url, "iot_gateway_mqtt_connected") == 1.0, 60
            )
            commit_end_offsets(spec.kafka, self.tag, contract.TOPIC_READINGS)
            self.say("stack starting the backend (Faust: up to a minute)")
            backend = self.supervisor.start("backend", ["backend"], env)
            self.supervisor.wait_ready(
                backend, lambda: endpoint_up(f"http://127.0.0.1:{be_port}/metrics"), 120
            )
        except ChildFailed as exc:
            raise StackError(f"the rig's services did not start: {exc}") from exc
        self.say(f"stack gateway and backend up; logs in {self.supervisor.log_dir}")

    def restart_broker(self, down_s: float) -> None:
        if self.broker is None:
            raise StackError(
                "broker_restart needs stack.broker: private (the rig never restarts a shared broker)"
            )
        self.broker.stop()
        time.sleep(down_s)  # the scripted outage, not a synchronisation
        self.broker.start()

    def down(self) -> None:
        self.supervisor.stop_all()
        if self.probe is not None:
            self.probe.stop()
        if self.kafka is not None:
            self.kafka.close()
        if self.broker is not None:
            self.broker.stop()
        if self.mongo is not None:
            self._drop_own_database()
            self.mongo.close()

    def _drop_own_database(self) -> None:
        """The run's database would otherwise outlive it: one per run, forever, on the user's server."""
        assert self.mongo is not None
        if not self.own_database:
            return
        if self.rig.stack.keep_database:
            self.say(
                f"stack kept database {self.own_database} (stack.keep_database: true); drop it when done"
            )
            return
        try:
            self.mongo.drop_database(self.own_database)
        except pymongo.errors.PyMongoError as exc:
            self.say(f"stack could not drop database {self.own_database}: {exc}; drop it by hand")
            return
        self.say(f"stack dropped database {self.own_database}")

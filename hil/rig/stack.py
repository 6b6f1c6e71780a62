"""The stack a rig run drives its boards against. With `services: start`, the run's own: a private
Mosquitto (so `broker_restart` never touches a shared broker) and Kafka, the product's gateway and
backend started as users start them (`iot gateway`, `iot backend`), a database of the run's own on
the shared MongoDB; with `services: running`, the product's. And the readers the expectations use:
an MQTT probe, a Kafka reader of `iot.readings`, the MongoDB database."""

from __future__ import annotations

import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pymongo
from confluent_kafka import Consumer, KafkaException, TopicPartition

from hil.errors import RigStackError
from hil.probe import Probe, broker_address
from hil.rig.spec import Rig
from iot import contract
from iot.broker import credentials
from iot.devices.provision import DevicesSettings, Provisioner
from iot.env import parse_mqtt_url, with_database
from iot.errors import IotError
from iot.harness.broker import PrivateBroker
from iot.harness.children import Children
from iot.harness.errors import ChildFailed
from iot.harness.kafka import commit_end_offsets
from iot.harness.ports import free_ports
from iot.harness.stack import private_kafka
from iot.kafka import KafkaConnection
from iot.reach import KafkaClientLog


class KafkaReadings:
    """Reads `iot.readings` from the run's start and keeps our devices' readings with their Kafka time."""

    def __init__(self, conn: KafkaConnection, devices: set[str]) -> None:
        self._devices = devices
        self._consumer = Consumer(
            {**conn.librdkafka(), "group.id": f"hil-reader-{time.time_ns()}", "enable.auto.commit": False},
            # Its own lines (one per reconnect while Kafka is away) go to our log at DEBUG; the
            # rig reports a Kafka that does not answer once, in its own words.
            logger=KafkaClientLog("hil.rig"),
        )
        self._consumer.assign(self._ends(contract.TOPIC_READINGS, conn, 30))
        self._lock = threading.Lock()
        self.seen: dict[tuple[str, int, int], list[int]] = defaultdict(list)  # id -> Kafka timestamps (ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hil-kafka", daemon=True)
        self._thread.start()

    def _ends(self, topic: str, conn: KafkaConnection, timeout: float) -> list[TopicPartition]:
        """Where each partition of the topic ends now, so the reader starts there. Right after a
        Kafka of the rig's own made its topics, the broker may not know them or their leaders yet
        (a metadata answer without partitions, then NOT_LEADER_FOR_PARTITION, both seen 0.05-3 s
        after `iot stack up` returned); a reader assigned to no partition would read nothing for the
        whole run, so this asks again until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                parts = list(self._consumer.list_topics(topic, timeout=10).topics[topic].partitions)
                if parts:
                    starts = [TopicPartition(topic, p) for p in parts]
                    for tp in starts:
                        tp.offset = self._consumer.get_watermark_offsets(tp, timeout=10)[1]
                    return starts
                problem = "no partitions in the broker's metadata"
            except KafkaException as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise RigStackError(f"cannot read {topic} from Kafka ({conn.describe()}): {problem}")
            time.sleep(0.2)

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
        self.children = Children(workdir / "services")
        self.broker_url = rig.stack.broker
        self.probe: Probe | None = None
        self.kafka: KafkaReadings | None = None
        self.mongo: pymongo.MongoClient[dict[str, Any]] | None = None
        self.db: Any = None
        self.own_database = ""  # the run's database, created for it (services: start)
        self.kafka_conn = rig.stack.kafka  # the product's (services: running) or the run's own
        self._own_kafka = ExitStack()
        self.mongo_uri = ""
        self.provisioned: list[str] = []  # boards given accounts on a broker that outlives the run
        self._settings: DevicesSettings | None = None

    @property
    def login(self) -> tuple[str, str]:
        """Who the rig's own clients (the probe, flash's wait for a birth message) log in as: the rig
        file's stack.mqtt_user, else the private broker's operator, else ("", ""), with which a
        probe finds the operator's account as the product's commands do."""
        spec = self.rig.stack
        if spec.mqtt_user:
            return spec.mqtt_user, spec.mqtt_password
        if self.broker is not None and self.broker.logins:
            return self.broker.operator.username, self.broker.operator.password
        return "", ""

    @property
    def settings(self) -> DevicesSettings | None:
        """The operator's settings on the rig's broker and database (once boards were provisioned):
        what `iot config` and `iot ota` would use; None on a broker without accounts."""
        return self._settings

    @property
    def broker_host_port(self) -> tuple[str, int]:
        return broker_address(self.broker_url)

    def up(self, devices: set[str]) -> None:
        spec = self.rig.stack
        if spec.broker == "private":
            # It dies with the rig: a killed rig leaves no broker behind. Authenticated like the stack's:
            # the boards get accounts on it (provision), the gateway and the probe log in.
            self.broker = PrivateBroker(self.workdir / "mosquitto", accounts=True)
            self.broker.start()
            self.broker_url = self.broker.url
            self.say(f"stack private mosquitto on {self.broker_url}")
        if spec.own_kafka:
            # The run's readings, windows and consumer groups stay in a Kafka of its own: on the
            # product's, the product's backend (group iot-backend) windowed them into its database.
            self.say("stack starting a private kafka")
            kafka = self._own_kafka.enter_context(private_kafka(self.workdir / "kafka"))
            self.kafka_conn = KafkaConnection(kafka.kafka_bootstrap)
            self.say(f"stack private kafka on {self.kafka_conn.bootstrap}")
        db_name = f"hil_{self.rig.run_id}" if spec.services == "start" else ""
        self.own_database = db_name
        mongo_uri = with_database(spec.mongo, db_name) if db_name else spec.mongo
        self.mongo_uri = mongo_uri
        self.mongo = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        self.db = self.mongo.get_default_database(default=contract.DEFAULT_DATABASE)
        self.kafka = KafkaReadings(self.kafka_conn, devices)
        self.probe = Probe(
            self.broker_url,
            ["sensors/+/+/#"],
            keep=lambda t: t.split("/")[2:3] != [] and t.split("/")[2] in devices,
            session=f"{self.tag}-probe",
            username=self.login[0],
            password=self.login[1],
        ).start()
        if spec.services == "start":
            self._start_services(mongo_uri)

    def _start_services(self, mongo_uri: str) -> None:
        spec = self.rig.stack
        gw_port, be_port = free_ports(2)
        env = {
            "IOT_MQTT_URL": self.broker_url,
            **self.kafka_conn.env(),
            "IOT_MONGO_URI": mongo_uri,
            "IOT_WINDOW_TUMBLING_S": str(spec.tumbling_s),
            "IOT_WINDOW_HOPPING_S": str(spec.tumbling_s * 2),
            "IOT_WINDOW_HOP_STEP_S": str(spec.tumbling_s),
            "IOT_WINDOW_GRACE_S": str(spec.grace_s),
            "IOT_GATEWAY_GROUP": self.tag,
            "IOT_GATEWAY_CLIENT_ID": f"{self.tag}-gw",
            "IOT_BACKEND_APP_ID": self.tag,
            "IOT_BACKEND_IDLE_TIMEOUT_S": "3",
            "IOT_BACKEND_DATA_DIR": str(self.workdir / "backend"),
            **(self.broker.gateway.as_env(credentials.GATEWAY) if self.broker is not None else {}),
        }
        try:
            self.say("stack starting the gateway")
            self.children.start_gateway("gateway", env, gw_port)
            commit_end_offsets(self.kafka_conn, self.tag, contract.TOPIC_READINGS)
            self.say("stack starting the backend (Faust: up to a minute)")
            self.children.start_backend("backend", env, be_port, timeout=120)
        except ChildFailed as exc:
            raise RigStackError(f"the rig's services did not start: {exc}") from exc
        self.say(f"stack gateway and backend up; logs in {self.children.log_dir}")

    def provision(self, boards: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
        """Accounts for (place, device) boards, as `iot devices add` makes them: on the private broker
        with its operator, on another broker with the operator's account when there is one (then they
        are removed again at `down`). device -> the config fields of its login; {} when the broker
        has no accounts to give."""
        if self.broker is not None:
            operator: credentials.Credentials | None = self.broker.operator
        else:
            operator = credentials.find(credentials.OPERATOR)
        if operator is None or not boards:
            return {}
        settings = DevicesSettings(parse_mqtt_url(self.broker_url), None, operator, self.mongo_uri)
        with Provisioner.open(settings) as prov:
            passwords = prov.ensure_all([(place, device, None) for place, device in boards])
        if self.broker is None:
            self.provisioned = [device for _place, device in boards]
        self._settings = settings
        return {d: {"mqtt_user": d, "mqtt_password": p} for d, p in passwords.items()}

    def _remove_accounts(self) -> None:
        if not self.provisioned or self._settings is None:
            return
        try:
            with Provisioner.open(self._settings) as prov:
                for device in self.provisioned:
                    prov.remove(device)
        except IotError as exc:
            self.say(f"stack could not remove the boards' accounts ({exc}); `iot devices remove` them")
        self.provisioned = []

    def restart_broker(self, down_s: float) -> None:
        if self.broker is None:
            raise RigStackError(
                "broker_restart needs stack.broker: private (the rig never restarts a shared broker)"
            )
        self.broker.stop()
        time.sleep(down_s)  # the scripted outage, not a synchronisation
        self.broker.start()

    def down(self) -> None:
        self.children.stop_all()
        self._remove_accounts()
        if self.probe is not None:
            self.probe.stop()
        if self.kafka is not None:
            self.kafka.close()
        if self.broker is not None:
            self.broker.stop()
        self._own_kafka.close()
        # Its data is scratch, not part of the report.
        shutil.rmtree(self.workdir / "kafka", ignore_errors=True)
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

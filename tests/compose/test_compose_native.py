"""The compose stack's Kafka and Prometheus configuration, run by the same programs natively (Docker
cannot run here): Kafka 4.1.1 from the stack's jars with the compose file's KAFKA_* settings as the
apache/kafka image turns them into server.properties, and Prometheus with compose's prometheus.yml
and alert rules.

What a container network does is translated, and only that: the service name `kafka` is 127.0.0.1,
each container port is a free port here, and a port the compose file publishes to the host is the
container port it maps to."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from iot.app.stack.config import StackConfig
from iot.harness.ports import free_ports, listening
from tests.compose.test_compose_variables import SERVICES
from tests.support import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# Variables of the apache/kafka image that are not broker properties.
NOT_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_LOG_DIRS"}
_LISTENER = re.compile(r"^(?P<name>[A-Z_]+)://(?P<host>[^:]*):(?P<port>\d+)$")


def image_properties(env: dict[str, Any]) -> dict[str, str]:
    """KAFKA_FOO_BAR -> foo.bar (`___` is `-`, `__` is `_`), the apache/kafka image's rule."""
    out = {}
    for key, value in env.items():
        if not key.startswith("KAFKA_") or key in NOT_PROPERTIES:
            continue
        name = key[len("KAFKA_") :].replace("___", "-").replace("__", "\0").replace("_", ".")
        out[name.replace("\0", "_").lower()] = str(value)
    return out


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port), from `docker-compose config`'s `ip:host:container/tcp`."""
    out = {}
    for entry in service.get("ports", []):
        ip, host_port, container = str(entry).removesuffix("/tcp").split(":")
        out[int(container)] = (ip, int(host_port))
    return out


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        m = _LISTENER.match(item.strip())
        assert m, f"cannot read listener {item!r}"
        out[m["name"]] = (m["host"], int(m["port"]))
    return out


KAFKA = SERVICES["kafka"]
PROPS = image_properties(KAFKA["environment"])


def test_the_host_listener_advertises_the_published_loopback_port() -> None:
    bound = listeners(PROPS["listeners"])
    advertised = listeners(PROPS["advertised.listeners"])
    ports = published(KAFKA)
    protocols = dict(item.split(":") for item in PROPS["listener.security.protocol.map"].split(","))
    assert set(bound) <= set(protocols), "every listener needs a security protocol"
    # Containers reach the broker by its service name on the inter-broker listener.
    inner = PROPS["inter.broker.listener.name"]
    assert advertised[inner] == ("kafka", bound[inner][1])
    # Programs on the host: a listener of its own, advertising the host side of its published port.
    (external,) = [n for n in advertised if n != inner]
    host, port = advertised[external]
    assert ports[bound[external][1]] == (host, port) == ("127.0.0.1", 9092)
    # The rig's template and the docs give programs on the host that address.
    assert "kafka: 127.0.0.1:9092" in (ROOT / "hil" / "rigs" / "esp32-bench.yaml").read_text()
    assert protocols[external] == "PLAINTEXT" and host == "127.0.0.1", "no auth: loopback only"


@pytest.fixture(scope="module")
def compose_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The compose Kafka's properties on free ports; yields listener name -> bootstrap address."""
    folder = tmp_path_factory.mktemp("compose-kafka")
    bound = listeners(PROPS["listeners"])
    advertised = listeners(PROPS["advertised.listeners"])
    ports = published(KAFKA)
    here = dict(zip(sorted(bound.values()), free_ports(len(bound)), strict=True))  # container port -> ours

    def ours(host: str, port: int) -> str:
        if host == "kafka":
            return f"127.0.0.1:{here[('', port)]}"
        (container,) = [c for c, hp in ports.items() if hp == (host, port)]  # a published port
        return f"127.0.0.1:{here[('', container)]}"

    props = dict(PROPS)
    props["listeners"] = ",".join(f"{n}://127.0.0.1:{here[hp]}" for n, hp in bound.items())
    props["advertised.listeners"] = ",".join(f"{n}://{ours(*hp)}" for n, hp in advertised.items())
    props["controller.quorum.voters"] = re.sub(
        r"@kafka:(\d+)", lambda m: f"@127.0.0.1:{here[('', int(m[1]))]}", props["controller.quorum.voters"]
    )
    props["log.dirs"] = str(folder / "data")
    (folder / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (folder / "log4j2.properties").write_text(
        "rootLogger.level = warn\nrootLogger.appenderRef.f.ref = f\nappender.f.type = File\n"
        f"appender.f.name = f\nappender.f.fileName = {folder / 'kafka.log'}\n"
        "appender.f.layout.type = PatternLayout\nappender.f.layout.pattern = %d %p %c{1} %m%n\n"
    )
    cfg = StackConfig.from_env()
    classpath = str(cfg.kafka_dir / "libs" / "*")
    log4j = f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}"
    cluster = "A" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[1:22]
    subprocess.run(
        ["java", "-cp", classpath, log4j, "kafka.tools.StorageTool", "format", "-t", cluster, "-c",
         str(folder / "server.properties")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    proc = subprocess.Popen(
        ["java", "-Xmx256m", log4j, "-cp", classpath, "kafka.Kafka", str(folder / "server.properties")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    by_name = {n: ours(*hp) for n, hp in advertised.items()}

    def up() -> bool:
        assert proc.poll() is None, f"Kafka with the compose settings exited: {folder / 'kafka.log'}"
        return all(listening(int(a.rsplit(":", 1)[1])) for a in by_name.values())

    try:
        wait_for(up, 90, "Kafka with the compose settings listening on each listener", interval=0.2)
        yield by_name
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_each_listener_hands_its_clients_its_own_address(compose_kafka: dict[str, str]) -> None:
    for address in compose_kafka.values():
        meta = AdminClient({"bootstrap.servers": address, "log_level": 0}).list_topics(timeout=30)
        brokers = [f"{b.host}:{b.port}" for b in meta.brokers.values()]
        assert brokers == [address]


def test_a_reading_produced_in_the_containers_is_read_from_the_host(compose_kafka: dict[str, str]) -> None:
    inner = compose_kafka[PROPS["inter.broker.listener.name"]]
    (host,) = [a for n, a in compose_kafka.items() if a != inner]
    topic = f"compose-{uuid.uuid4().hex[:6]}"
    producer = Producer({"bootstrap.servers": inner, "log_level": 0})
    producer.produce(topic, b'{"v": 1}', key=b"kitchen-1")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": host, "group.id": topic, "auto.offset.reset": "earliest", "log_level": 0}
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        msg = None
        while msg is None or msg.error():
            assert time.monotonic() < deadline, "nothing read over the host listener in 60 s"
            msg = consumer.poll(0.5)
        assert (msg.key(), msg.value()) == (b"kitchen-1", b'{"v": 1}')
    finally:
        consumer.close()


def test_prometheus_runs_the_compose_config_and_rules(tmp_path: Path) -> None:
    """The real Prometheus loads compose's prometheus.yml and alerts.yml, evaluates every rule without
    an error, and scrapes every job compose lists (itself on a free port here)."""
    prom_dir = ROOT / "compose" / "prometheus"
    (port,) = free_ports(1)
    config = yaml.safe_load((prom_dir / "prometheus.yml").read_text())
    # `docker-compose config` prints bind mounts as `/abs/source:/target:ro`.
    volumes = SERVICES["prometheus"]["volumes"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in volumes if m.startswith("/")}
    config["rule_files"] = [mounts[f] for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        for sc in job["static_configs"]:
            sc["targets"] = [t.replace("localhost:9090", f"127.0.0.1:{port}") for t in sc["targets"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )

    def api(path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5) as resp:
            return json.load(resp)["data"]

    def loaded() -> list[dict[str, Any]] | None:
        """Every rule once evaluated, and every job listed (discovery runs asynchronously)."""
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        try:
            groups = api("rules")["groups"]
            jobs = {t["labels"]["job"] for t in api("targets")["activeTargets"]}
        except OSError:  # not answering yet
            return None
        rules = [r for g in groups for r in g["rules"]]
        evaluated = rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        return rules if evaluated and jobs == {j["job_name"] for j in config["scrape_configs"]} else None

    def self_scraped() -> bool:
        """The compose hosts are service names; only Prometheus itself can be scraped here."""
        targets = api("targets")["activeTargets"]
        return any(t["labels"]["job"] == "prometheus" and t["health"] == "up" for t in targets)

    try:
        rules_file = yaml.safe_load(Path(config["rule_files"][0]).read_text())
        want_rules = {r["alert"] for g in rules_file["groups"] for r in g["rules"]}
        rules = wait_for(loaded, 60, "every rule evaluated and every job listed", interval=0.2)
        assert {r["name"] for r in rules} == want_rules
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        wait_for(self_scraped, 30, "Prometheus scraping itself", interval=0.2)
    finally:
        proc.terminate()
        proc.wait(30)

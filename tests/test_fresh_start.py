"""Every command starts as a new user starts it: from an empty directory, with its defaults.

Each command runs with an empty temporary working directory and an environment holding only what a
shell has (PATH, HOME) plus what keeps it from disturbing other tests on the shared stack (its own
consumer group, MQTT filter, metrics port). Nothing may assume a directory the command did not create.
`iot demo` is run the same way by tests/demo.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from iot import contract
from iot.harness.children import Child, run
from iot.harness.metrics import scrape
from iot.harness.ports import free_ports, listening
from tests.accounts import remove_boards
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration
IOT = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "iot")


def bare_env(**extra: str) -> dict[str, str]:
    """A login shell's environment: no IOT_* variable except the ones given."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


@pytest.fixture
def empty_dir(tmp_path: Path) -> Iterator[Path]:
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    yield workdir


def start(args: list[str], cwd: Path, env: dict[str, str]) -> Child:
    """`iot ARGS` in `cwd` with exactly `env`; its output goes beside `cwd`, not into it."""
    return Child(args[0], [IOT, *args], cwd.parent / f"{args[0]}.log", env, cwd=cwd).start()


def stop(child: Child) -> tuple[int | None, str]:
    """SIGTERM (SIGKILL after 60 s), its exit code and output."""
    return child.stop(60), child.log()


def alive(child: Child) -> None:
    if not child.alive():
        raise AssertionError(f"exited with {child.returncode}:\n{child.log()[-4000:]}")


def serving(child: Child, port: int, metric: str, value: float) -> bool:
    """The process is alive and its metrics endpoint has `metric` at `value`."""
    alive(child)
    return scrape(f"http://127.0.0.1:{port}/metrics").get(metric) == value


def listening_alive(child: Child, port: int) -> bool:
    alive(child)
    return listening(port)


def group_stable(group: str) -> bool:
    admin = AdminClient({"bootstrap.servers": contract.ENV_DEFAULTS["IOT_KAFKA_BOOTSTRAP"]})
    try:
        described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException:
        return False
    return described.state == ConsumerGroupState.STABLE and bool(described.members)


def test_iot_gateway_starts_with_its_defaults_in_an_empty_directory(empty_dir: Path) -> None:
    tag = unique("fresh")
    (port,) = free_ports(1)
    env = bare_env(
        IOT_GATEWAY_GROUP=tag,
        IOT_GATEWAY_CLIENT_ID=tag,
        IOT_GATEWAY_TOPIC_FILTER=f"sensors/{tag}/+/reading",
        IOT_GATEWAY_METRICS_PORT=str(port),
    )
    proc = start(["gateway"], empty_dir, env)
    try:
        wait_for(lambda: serving(proc, port, "iot_gateway_mqtt_connected", 1.0), 60, "the gateway connected")
    finally:
        code, out = stop(proc)
    assert code == 0, out[-4000:]


def test_iot_backend_starts_with_its_defaults_in_an_empty_directory(empty_dir: Path) -> None:
    tag = unique("fresh")
    (port,) = free_ports(1)
    env = bare_env(
        IOT_BACKEND_APP_ID=tag,
        IOT_BACKEND_METRICS_PORT=str(port),
        IOT_BACKEND_OFFSET_RESET="latest",
        IOT_MONGO_URI=contract.ENV_DEFAULTS["IOT_MONGO_URI"].rsplit("/", 1)[0] + f"/{tag}",
    )
    proc = start(["backend"], empty_dir, env)
    try:
        # Faust opens its data dir only once the worker runs: wait for the dir and a live process.
        wait_for(lambda: listening_alive(proc, port), 90, "the backend's metrics endpoint")
        wait_for(lambda: (empty_dir / ".cache" / "iot-backend").is_dir(), 60, "Faust's data dir")
        # The crash this guards against came as Faust's worker started: wait until it has joined its
        # consumer group and holds partitions, which only a running worker does.
        wait_for(lambda: group_stable(tag) and listening_alive(proc, port), 90, "the worker in its group")
    finally:
        code, out = stop(proc)
    assert code == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]


def test_iot_boards_starts_in_an_empty_directory_and_honours_env_file(empty_dir: Path) -> None:
    ramp = {m: {"kind": "constant", "value": 1.0} for m in ("humidity", "pressure", "luminosity")}
    ramp["temperature"] = {"kind": "constant", "value": 12.5}
    (empty_dir / "env.json").write_text(json.dumps({"kitchen": ramp}))
    prefix = unique("fr")
    args = ["boards", "--count", "1", "--interval", "0.5", "--duration", "3", "--prefix", prefix]
    result = run([IOT, *args, "--env-file", "env.json"], 120, env=bare_env(), cwd=empty_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((empty_dir / ".cache" / "boards" / "boards.json").read_text())
    assert [b["env"] for b in manifest] == [ramp]
    remove_boards(b["device"] for b in manifest)


def test_iot_windows_and_stack_status_answer_in_an_empty_directory(empty_dir: Path) -> None:
    windows = run([IOT, "windows", "--last", "1m", "--limit", "1"], 60, env=bare_env(), cwd=empty_dir)
    assert windows.returncode == 0, windows.stdout + windows.stderr
    # The stack's state lives beside the checkout, not in the working directory: status finds it.
    stack_dir = {k: v for k, v in os.environ.items() if k == "IOT_STACK_DIR"}
    status = run([IOT, "stack", "status", "--json"], 60, env=bare_env(**stack_dir), cwd=empty_dir)
    assert status.returncode == 0, status.stdout + status.stderr
    assert {s["name"] for s in json.loads(status.stdout) if s["healthy"]} >= {"mosquitto", "kafka"}

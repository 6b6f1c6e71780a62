"""Private native stacks: services of their own (state in their own folder, on free ports) that a
test or a benchmark may stop, SIGKILL and start again, never the shared stack's.

They are run through `iot stack up | down | kill | status`, as a user runs the stack: the harness does
not import the stack's code (iot/harness/__init__.py, the layers)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from iot.env import parse_mqtt_url
from iot.harness.children import IOT, run
from iot.harness.errors import HarnessError
from iot.harness.ports import HOST, free_ports
from iot.kafka import KafkaConnection

__all__ = ["PrivateStack", "private_ferretdb", "private_kafka", "private_services"]


class PrivateStack:
    """The stack's services under `folder`, configured by `variables` (IOT_* settings, e.g. ports);
    every other IOT_* variable of this process is left out, so the stack's defaults apply."""

    def __init__(self, folder: Path, variables: Mapping[str, str]) -> None:
        self.folder = folder
        self.variables = dict(variables)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOT_")},
            "IOT_STACK_DIR": str(folder),
            # Programs are fetched and built once per machine, into the shared cache, not per stack.
            "IOT_CACHE_DIR": os.environ.get("IOT_CACHE_DIR", ""),
            **variables,
        }
        self._pids: dict[str, int | None] = {}

    def _iot(self, *args: str, timeout: float = 600.0) -> str:
        done = run([IOT, "stack", *args], timeout, self.env)
        if done.returncode != 0:
            raise HarnessError(
                f"`iot stack {' '.join(args)}` (IOT_STACK_DIR={self.folder}) failed with "
                f"{done.returncode}:\n{(done.stdout + done.stderr).strip()[-3000:]}"
            )
        return done.stdout

    def up(self, names: Sequence[str]) -> None:
        """Start them (a no-op for what runs) and return once each answers a real client."""
        self._remember(json.loads(self._iot("up", "--json", *names)))

    def down(self, names: Sequence[str] = ()) -> None:
        self._iot("down", *names)
        for name in names or list(self._pids):
            self._pids[name] = None

    def kill(self, name: str) -> int | None:
        """SIGKILL one service (no chance to save anything); `up([name])` brings it back on the same
        data. Returns the pid it had, None when it was not running."""
        said = self._iot("kill", name)
        self._pids[name] = None
        found = re.search(r"\(pid (\d+)\)", said)
        return int(found.group(1)) if found else None

    def pid(self, name: str) -> int | None:
        """The service's pid as the last up, down or kill left it (None: not running); a sampler may
        ask it often, so it is not asked of the stack again."""
        if name not in self._pids:
            self._remember(self.status())
        return self._pids.get(name)

    def _remember(self, rows: list[dict[str, Any]]) -> None:
        self._pids.update({str(r["name"]): (int(r["pid"]) if r["pid"] else None) for r in rows})

    def status(self) -> list[dict[str, Any]]:
        """`iot stack status --json`: a row per service and listener (name, healthy, pid, port, detail)."""
        # `status` exits 1 while a service is down: its JSON is the answer all the same.
        done = run([IOT, "stack", "status", "--json"], 120, self.env)
        try:
            rows: list[dict[str, Any]] = json.loads(done.stdout)
        except ValueError:
            raise HarnessError(f"`iot stack status --json` said: {done.stderr.strip()[-2000:]}") from None
        return rows

    @property
    def kafka_bootstrap(self) -> str:
        return self.variables["IOT_KAFKA_BOOTSTRAP"]

    def kafka(self, sasl: bool = False) -> KafkaConnection:
        """How a client reaches its Kafka: the plain listener, or (IOT_KAFKA_SASL_PORT set) the
        SASL_SSL one as the stack's user, from the client variables file `iot stack up` writes for
        it (<stack>/kafka/sasl-client.env), as a user would source it."""
        if not sasl:
            return KafkaConnection(self.kafka_bootstrap)
        env = {}
        for line in (self.folder / "kafka" / "sasl-client.env").read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                env[name.strip()] = value.strip()
        return KafkaConnection.from_env(env)

    @property
    def mongo_uri(self) -> str:
        return self.variables["IOT_MONGO_URI"]

    @property
    def mqtt_url(self) -> str:
        return self.variables["IOT_MQTT_URL"]

    @property
    def mqtt_port(self) -> int:
        return parse_mqtt_url(self.mqtt_url).port


@contextmanager
def private_services(
    folder: Path, names: Sequence[str], variables: Mapping[str, str]
) -> Iterator[PrivateStack]:
    """`names` of a private stack, up for the block and stopped after it, whatever happened."""
    stack = PrivateStack(folder, variables)
    try:
        stack.up(names)
        yield stack
    finally:
        stack.down(names)


@contextmanager
def private_kafka(folder: Path, heap: str = "256m") -> Iterator[PrivateStack]:
    """A single-node KRaft Kafka of its own (free ports, state under `folder`), the contract's topics
    created; `stack.kafka_bootstrap` is where it listens."""
    client_port, controller_port = free_ports(2)
    variables = {
        "IOT_KAFKA_BOOTSTRAP": f"{HOST}:{client_port}",
        "IOT_KAFKA_CONTROLLER_PORT": str(controller_port),
        "IOT_KAFKA_HEAP": heap,
    }
    with private_services(folder, ["kafka"], variables) as stack:
        yield stack


@contextmanager
def private_ferretdb(folder: Path) -> Iterator[PrivateStack]:
    """A FerretDB of its own (the stack's build, free ports, its SQLite files under `folder`); its
    MongoDB URI is `stack.mongo_uri`."""
    mongo_port, debug_port = free_ports(2)
    variables = {
        "IOT_MONGO_URI": f"mongodb://{HOST}:{mongo_port}/iot",
        "IOT_FERRETDB_DEBUG_PORT": str(debug_port),
    }
    with private_services(folder, ["ferretdb"], variables) as stack:
        yield stack

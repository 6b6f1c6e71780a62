"""A broker with accounts of its own (the dynamic-security plugin, as the native stack runs it) and a
registry database of the test's own on the stack's MongoDB, for provisioning tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

from iot import contract
from iot.broker.credentials import OPERATOR
from iot.harness.broker import PrivateBroker
from tests.support import unique

MONGO = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"]).rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    with PrivateBroker(tmp_path_factory.mktemp("dynsec-broker"), accounts=True, persistent=False) as broker:
        yield broker


@dataclass
class Registry:
    uri: str
    db: Any

    def doc(self, device: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.db[contract.COLL_DEVICES].find_one({"_id": device})
        return found


@pytest.fixture
def registry() -> Iterator[Registry]:
    name = unique("devreg").replace("-", "_")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO, tz_aware=True)
    yield Registry(f"{MONGO}/{name}", client[name])
    client.drop_database(name)
    client.close()


@pytest.fixture
def devices_env(broker: PrivateBroker, registry: Registry, tmp_path: Path) -> dict[str, str]:
    """What `iot devices` reads: this broker, its operator, this registry (and no stack file)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("IOT_")},
        "IOT_MQTT_URL": broker.url,
        "IOT_MONGO_URI": registry.uri,
        "IOT_STACK_DIR": str(tmp_path / "no-stack"),
        **broker.operator.as_env(OPERATOR),
    }

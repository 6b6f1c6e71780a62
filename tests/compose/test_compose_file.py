"""The compose stack users run: it parses with a real Compose implementation and follows our rules."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"
ONE_SHOT = {"mosquitto-init", "mosquitto-certs", "broker-accounts", "kafka-topics"}
REQUIRED = {
    "mosquitto",
    "kafka",
    "mongo",
    "mongo-express",
    "gateway",
    "backend",
    "prometheus",
    "grafana",
    "node-exporter",
}


def compose_config(*extra: str, env_file: Path | None) -> subprocess.CompletedProcess[str]:
    args = ["docker-compose", "-f", str(COMPOSE)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "MONGO_", "GRAFANA_"))}
    return subprocess.run(
        [*args, "config", *extra], capture_output=True, text=True, env=env, check=False, cwd=ROOT / "compose"
    )


def test_compose_file_validates_with_the_example_env() -> None:
    result = compose_config("-q", env_file=ROOT / "compose" / ".env.example")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config("-q", env_file=empty)
    assert result.returncode != 0
    assert any(
        v in result.stderr for v in ("MQTT_OPERATOR_PASSWORD", "MQTT_GATEWAY_PASSWORD", "MONGO_APP_USER")
    )


def test_every_service_is_pinned_healthchecked_and_volumes_are_named() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert services.keys() >= REQUIRED
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        if name not in ONE_SHOT and name != "boards":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("./", "/")):
                assert source in doc["volumes"], f"{name}: volume {source} is not declared"


def test_no_secret_literal_in_the_compose_file() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    for name, svc in doc["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if any(word in key for word in ("PASSWORD", "SECRET")):
                assert str(value).startswith("${"), f"{name}: {key} must come from .env, not the file"

"""Prometheus config and alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from iot.app.stack.config import StackConfig
from iot.app.stack.services import prometheus_config

pytestmark = pytest.mark.unit
PROM = Path(__file__).resolve().parents[2] / "compose" / "prometheus"


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_exactly_as_specified() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_has_cases_that_must_fire_and_that_must_not() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert names - fires == set(), "rules without a case that must fire"
    assert names - quiet == set(), "rules without a case that must stay quiet"


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    config = (PROM / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(config)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_prometheus_config_is_valid_and_scrapes_the_same_product_jobs(tmp_path: Path) -> None:
    native = prometheus_config(StackConfig.from_env({}))
    (tmp_path / "prometheus.yml").write_text(native)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for job in ("gateway", "backend", "node"):
        assert f"job_name: {job}" in native
        assert f"job_name: {job}" in (PROM / "prometheus.yml").read_text()

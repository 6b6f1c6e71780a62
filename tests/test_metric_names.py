"""Metric names: a counter is declared under the name it is exported and queried by (`..._total`), as
the dashboards, alerts and tests spell it, so a search for a panel's metric finds its declaration
(prometheus-client exports `x_total` for both `Counter("x")` and `Counter("x_total")`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def declared_counters() -> dict[str, str]:
    """Every Counter(...) of the product: its first argument, by where it is."""
    out = {}
    for folder in ("iot", "gateway", "backend", "hil"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Counter"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    out[f"{path.relative_to(REPO)}:{node.lineno}"] = str(node.args[0].value)
    return out


def test_every_counter_is_declared_as_it_is_exported() -> None:
    counters = declared_counters()
    assert len(counters) >= 20, counters  # the gateway's and the backend's
    assert {where: name for where, name in counters.items() if not name.endswith("_total")} == {}
    assert all(name.startswith(("iot_gateway_", "iot_backend_")) for name in counters.values())

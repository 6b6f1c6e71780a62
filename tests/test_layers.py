"""The layers run one way (README, "Layout"): every import of ours, at any depth of a module, goes
from a layer to one it may use. The kernel imports nothing of ours, the harness only the kernel, the
rig and the benchmarks never the application."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
# The `iot boards | flash | hil` commands register the rig's too: they are the application's.
APP_MODULES = ("hil.cli",)
# What each layer may import besides itself.
ALLOWED: dict[str, set[str]] = {
    "kernel": set(),
    "harness": {"kernel"},
    "gateway": {"kernel"},
    "backend": {"kernel"},
    "hil": {"kernel", "harness"},
    # Remote configuration and updates: the operator's side of the fleet, beside the rig's boards.
    "fleetops": {"kernel", "hil"},
    "app": {"kernel", "harness", "gateway", "backend", "hil", "fleetops", "rig"},
    # The rig's fleet steps (hil/rig/fleet_steps.py) configure and update boards as the operator does:
    # fleetops sits below the rig (it uses hil, never hil.rig).
    "rig": {"kernel", "harness", "hil", "fleetops"},
    # A benchmark may run the `iot` command in-process (bench/soak_traced.py: under tracemalloc).
    # bench/ota_fleet.py updates a virtual fleet as `iot ota push` does (fleetops). bench/batch_cpu.py
    # measures the batch path over the fuzz tests' in-memory stores (tests/backend/memory.py): the
    # model those tests hold to the real stores' write semantics, so the bench measures what they test.
    "bench": {
        "kernel",
        "harness",
        "gateway",
        "backend",
        "hil",
        "fleetops",
        "rig",
        "iot.app.cli",
        "tests.backend.memory",
    },
    "tests": {"kernel", "harness", "gateway", "backend", "hil", "fleetops", "rig", "app", "bench"},
}


def layer(module: str) -> str | None:
    """The layer of a module of ours (dotted name), None for anything else."""
    parts = module.split(".")
    if module in APP_MODULES or module.startswith(tuple(m + "." for m in APP_MODULES)):
        return "app"
    if parts[0] == "iot":
        return {"harness": "harness", "app": "app"}.get(parts[1] if len(parts) > 1 else "", "kernel")
    if parts[0] == "hil":
        return "rig" if len(parts) > 1 and parts[1] == "rig" else "hil"
    if parts[0] in ("gateway", "backend", "fleetops", "bench", "tests"):
        return parts[0]
    # bench/*.py import each other by their file names (soak_common, gateway_load).
    if len(parts) == 1 and (REPO / "bench" / f"{module}.py").is_file():
        return "bench"
    return None


def imports(path: Path, module: str) -> list[str]:
    """Every module `path` imports, relative imports resolved."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.append(name)
            # `from iot.app import cli` imports iot.app.cli
            found += [f"{name}.{alias.name}" for alias in node.names]
    return found


def violations() -> list[str]:
    """`file (layer) imports module (layer)` for every import the layers forbid."""
    out: list[str] = []
    for folder in ("iot", "gateway", "backend", "hil", "fleetops", "bench", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO)
            if path.name == "__main__.py":  # an entry point: nothing imports it
                continue
            module = ".".join(rel.with_suffix("").parts)
            source = layer(module)
            assert source is not None
            for target in imports(path, module):
                dest = layer(target)
                if dest is None or dest == source:
                    continue
                allowed = ALLOWED[source]
                if dest in allowed or any(target == a or target.startswith(a + ".") for a in allowed):
                    continue
                line = f"{rel} ({source}) imports {target} ({dest})"
                # `from a.b import c` is one finding, not two (a.b and a.b.c).
                if not any(line.startswith(seen.removesuffix(f" ({dest})") + ".") for seen in out):
                    out.append(line)
    return sorted(set(out))


def test_every_import_goes_down_the_layers() -> None:
    assert violations() == []


def test_the_check_sees_a_wrong_way_import() -> None:
    """The check itself: the imports it must refuse are refused."""
    assert layer("iot.contract") == "kernel" and layer("iot.harness.children") == "harness"
    assert layer("hil.rig.stack") == "rig" and layer("hil.cli") == "app" and layer("soak_common") == "bench"
    assert layer("gateway_load") == "bench" and layer("json") is None
    for source, target in [("kernel", "harness"), ("harness", "app"), ("rig", "app"), ("hil", "rig")]:
        assert target not in ALLOWED[source]
    assert "iot.harness.children" in imports(REPO / "iot/harness/broker.py", "iot.harness.broker")
    assert "gateway.service" in imports(REPO / "gateway/cli.py", "gateway.cli")  # `from .service import`
    assert "pathlib.Path" in imports(Path(__file__), "tests.test_layers")

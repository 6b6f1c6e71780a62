"""Idempotent, cached installs of the stack's programs, with progress.

Debian packages through apt, the Kafka broker's jars through Maven, FerretDB built from its Go module.
Each step checks for its result first, so a warm machine pays only a few file checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from iot import log
from iot.app.stack.config import FERRETDB_BUILD, FERRETDB_VERSION, StackConfig
from iot.errors import IotError

_log = log.get("iot.stack.install")

# binary that proves the package is there -> Debian package
APT_PACKAGES = {
    "/usr/sbin/mosquitto": "mosquitto",
    "/usr/bin/mosquitto_passwd": "mosquitto",
    "/usr/bin/prometheus": "prometheus",
    "/usr/bin/promtool": "prometheus",
    "/usr/bin/prometheus-node-exporter": "prometheus-node-exporter",
    "/usr/bin/docker-compose": "docker-compose",
    # makes the broker's TLS CA and certificate (iot/app/stack/tls.py)
    "/usr/bin/openssl": "openssl",
}


class InstallError(IotError):
    """An install step failed; the message names the step and what to do."""


def _run(step: str, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise InstallError(f"{step}: `{' '.join(argv)}` exited {proc.returncode}\n{tail}")


def _timed(step: str, action: Callable[[], None]) -> None:
    started = time.monotonic()
    _log.info("install_start", step=step)
    action()
    _log.info("install_done", step=step, seconds=f"{time.monotonic() - started:.1f}")


def ensure_apt() -> None:
    missing = sorted({pkg for path, pkg in APT_PACKAGES.items() if not Path(path).exists()})
    if not missing:
        return

    def install() -> None:
        if shutil.which("apt-get") is None:
            raise InstallError(f"apt: packages {missing} are missing and this machine has no apt-get")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        _run("apt-get update", ["apt-get", "update", "-qq"], env=env)
        _run(
            "apt-get install",
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
        )

    _timed(f"apt {' '.join(missing)}", install)


def ensure_kafka(cfg: StackConfig) -> None:
    libs = cfg.kafka_dir / "libs"
    marker = cfg.kafka_dir / ".complete"
    if marker.exists():
        return

    def install() -> None:
        if shutil.which("mvn") is None:
            raise InstallError("kafka: Maven (mvn) is needed to fetch the broker jars; install maven")
        if libs.exists():
            shutil.rmtree(libs)
        libs.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(resources.files("iot.app.stack").joinpath("kafka-pom.xml").read_text())
            _run(
                "maven kafka jars",
                [
                    "mvn",
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={libs}",
                    "-DincludeScope=runtime",
                ],
            )
        marker.write_text("ok\n")

    _timed("kafka jars (maven)", install)


# (file, text in FERRETDB_VERSION's source, replacement): applied before the build; a text that is not
# found exactly once fails the install rather than building an unpatched binary.
FERRETDB_PATCHES: tuple[tuple[str, str, str], ...] = (
    # The SQLite backend pushes an `{_id: value}` filter down as `WHERE _ferretdb_sjson->'$._id' = ?`
    # (find, update, delete), but creates the collection's unique `_id` index on
    # `_ferretdb_sjson->"_id"`. SQLite uses an expression index only for the same expression, so every
    # `{_id}` statement scanned and JSON-parsed the whole table (EXPLAIN: "SCAN", not "SEARCH ... USING
    # INDEX"). Measured at 50k window documents: find_one by _id 364 ms, a replace 947 ms; with the
    # index 0.8 ms and 0.6 ms, flat from 1k to 50k. In the 500-board soak FerretDB spent 99% of its CPU
    # in update statements, 86% of it in json_extract of the scanned rows. Same value either way: both
    # spellings extract the `_id` member as JSON text. The index exists in every collection already, so
    # data files written before need nothing.
    (
        "internal/backends/sqlite/metadata/metadata.go",
        "IDColumn = DefaultColumn + \"->'$._id'\"",
        'IDColumn = DefaultColumn + "->\\"_id\\""',
    ),
)


def patch_ferretdb(source: Path) -> None:
    """Apply FERRETDB_PATCHES to a writable copy of FerretDB's source."""
    for name, old, new in FERRETDB_PATCHES:
        path = source / name
        text = path.read_text()
        if text.count(old) != 1:
            raise InstallError(
                f"ferretdb: patch for {name} does not apply to {FERRETDB_VERSION} (expected {old!r} once); "
                "review install.FERRETDB_PATCHES for this version"
            )
        path.write_text(text.replace(old, new))


def ensure_ferretdb(cfg: StackConfig) -> None:
    binary = cfg.ferretdb_bin
    if binary.exists():
        return

    def install() -> None:
        if shutil.which("go") is None:
            raise InstallError("ferretdb: the Go toolchain is needed to build FerretDB; install golang")
        module = f"github.com/FerretDB/FerretDB@{FERRETDB_VERSION}"
        proc = subprocess.run(
            ["go", "mod", "download", "-json", module], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise InstallError(f"ferretdb: `go mod download {module}` failed\n{proc.stdout}{proc.stderr}")
        source = Path(json.loads(proc.stdout)["Dir"])
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "src"
            shutil.copytree(source, work)
            for path in work.rglob("*"):
                path.chmod(path.stat().st_mode | 0o200)
            # The module zip lacks the generated version file FerretDB panics without at start-up.
            (work / "build/version/version.txt").write_text(FERRETDB_VERSION + "\n")
            patch_ferretdb(work)
            binary.parent.mkdir(parents=True, exist_ok=True)
            _run("go build ferretdb", ["go", "build", "-o", str(binary), "./cmd/ferretdb"], cwd=work)

    _timed(f"ferretdb {FERRETDB_BUILD} (go build)", install)


def ensure_all(cfg: StackConfig) -> None:
    ensure_apt()
    ensure_kafka(cfg)
    ensure_ferretdb(cfg)

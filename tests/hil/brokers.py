"""A private Mosquitto per test, for faults the shared broker must not suffer (stop, auth)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import wait_for

MOSQUITTO = "/usr/sbin/mosquitto"


class PrivateBroker:
    def __init__(self, workdir: Path, persistent: bool = False, extra: str = "") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        workdir.mkdir(parents=True, exist_ok=True)
        # persistent: a probe's session and its queued messages survive a restart.
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "user root", f"log_dest file {workdir}/mosquitto.log"]
        if persistent:
            lines += ["persistence true", f"persistence_location {workdir}/"]
        self.conf.write_text("\n".join(lines) + "\n" + (extra or "allow_anonymous true\n"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(listening, 10, f"private mosquitto on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file and exits
            self.proc.wait(10)

    def __enter__(self) -> PrivateBroker:
        if not os.path.exists(MOSQUITTO):
            pytest.fail(f"{MOSQUITTO} missing: `iot stack install` installs mosquitto")
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

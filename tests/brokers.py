"""A private Mosquitto per test: for faults the shared broker must not suffer (stop, kill, auth, TLS).

One helper for every test folder. Configured like the stack's broker where it matters: persistence
(optional) and raised queue limits, so a session's queued QoS 1 messages survive a clean restart.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

import pytest

from tests.support import free_ports, wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


class PrivateBroker:
    """A Mosquitto of the test's own on a free port, with its own folder; start/stop/kill at will.

    `listener_conf` goes under the listener (authentication, TLS files); `tls` only changes `url`.
    """

    def __init__(
        self,
        folder: Path,
        listener_conf: str = "allow_anonymous true\n",
        tls: bool = False,
        persistent: bool = True,
    ) -> None:
        (self.port,) = free_ports(1)
        self.folder = folder
        self.tls = tls
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        lines = [
            # Started as root, mosquitto would drop to its own user, which cannot write to tmp dirs.
            f"user {getpass.getuser()}",
            f"listener {self.port} {HOST}",
            listener_conf.rstrip("\n"),
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 1000",
            f"log_dest file {folder}/mosquitto.log",
        ]
        if persistent:
            lines += ["persistence true", f"persistence_location {folder}/"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    def start(self) -> None:
        if not os.path.exists(MOSQUITTO):
            pytest.fail(f"{MOSQUITTO} missing: `iot stack install` installs mosquitto")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._accepting, 15, f"private mosquitto on port {self.port}")

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with socket.create_connection((HOST, self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves sessions and queued messages to its persistence file first."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL: what is only in Mosquitto's memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return (self.folder / "mosquitto.log").read_text(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.kill()

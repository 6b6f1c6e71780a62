"""Free ports on loopback for the services a test, the demo or a benchmark starts, and whether
something listens on one.

Why not let the kernel choose (`bind(0)`): it chooses from `net.ipv4.ip_local_port_range`, the same
range every outgoing connection takes its source port from. Between the pick and the service's bind
any client of the stack (a consumer, a probe, a board) could take that port, and the service failed
with "bind: address already in use" (FerretDB's debug port in the short soak, about once in ten full
runs). Ports below that range are never given to outgoing connections, only to explicit binds, so
the ports handed out here come from there: `[POOL_FLOOR, low bound)` (28000-32767 on a default
Linux), or above the range if a tuned machine leaves too little room below it.

Two callers never get the same port while the service it was meant for may still be starting, even
in parallel processes (pytest and an `iot stack` it started, two test runs in one network
namespace): picks go round the pool from a cursor kept in a state file, with each port leased for
`LEASE_S`, under an exclusive `flock` on that file. There is one such file per user and network
namespace (ports are per namespace). Each port is also bound once to check that nothing holds it
now.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from iot.harness.errors import HarnessError

__all__ = [
    "HOST",
    "LEASE_S",
    "POOL_FLOOR",
    "PortPicker",
    "ephemeral_range",
    "free_port",
    "free_ports",
    "listening",
    "pool",
]

HOST = "127.0.0.1"
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default range when /proc cannot tell (not Linux, or /proc not mounted).
DEFAULT_RANGE = (32768, 60999)
# Below this are the stack's default ports (1883, 8883, 9090-9109, 27017, ...) and other well-known
# services: a private stack must not take a port the default stack may start on later.
POOL_FLOOR = 28000
# The fewest ports a pool on one side of the ephemeral range may have to be used.
MIN_POOL = 1000
# How long a port handed out stays reserved for its caller: a private Kafka binds within a minute
# even on a loaded box. The cursor makes a reuse within this time need a whole pool of picks anyway.
LEASE_S = 600.0


def ephemeral_range(path: Path = RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (and `bind(0)`), both inclusive."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_RANGE
    return low, high


def pool(ephemeral: tuple[int, int] | None = None) -> range:
    """The ports handed out: below the ephemeral range, else above it."""
    low, high = ephemeral or ephemeral_range()
    below = range(POOL_FLOOR, low)
    if len(below) >= MIN_POOL:
        return below
    above = range(max(high + 1, POOL_FLOOR), 65536)
    if len(above) >= MIN_POOL:
        return above
    raise HarnessError(
        f"no room for test ports outside the ephemeral range {low}-{high} "
        f"(net.ipv4.ip_local_port_range): leave at least {MIN_POOL} ports between {POOL_FLOOR} and "
        "its low bound, or above its high bound"
    )


def _netns() -> int:
    """This process's network namespace (its inode), so each namespace keeps its own leases."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def _default_state() -> Path:
    return Path(tempfile.gettempdir()) / f"iot-ports-{os.getuid()}-{_netns()}.json"


def bindable(port: int, host: str = HOST) -> bool:
    """True if a listener could bind `port` now. Without SO_REUSEADDR, so a port still in TIME_WAIT
    or held by any socket counts as taken: a port that passes is free for any server."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


class PortPicker:
    """Hands out ports of `ports` (the pool) round a cursor kept in `state`, each leased for
    `lease_s`, under an exclusive lock on that file: unique across threads and processes."""

    def __init__(
        self, state: Path | None = None, ports: Sequence[int] | None = None, lease_s: float = LEASE_S
    ) -> None:
        self.state = state or _default_state()
        self.ports = ports if ports is not None else pool()
        self.lease_s = lease_s

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[str]]:
        fd = os.open(self.state, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            yield f

    def _read(self, f: IO[str]) -> tuple[int, dict[int, float]]:
        """The next port to try and the leases held; nothing if the file is new or cut short (a
        process killed mid-write: the bind check still keeps ports in use out)."""
        try:
            data = json.loads(f.read() or "{}")
            cursor = int(data.get("next", 0))
            leases = {int(p): float(t) for p, t in dict(data.get("leases", {})).items()}
        except (ValueError, TypeError, AttributeError):
            return 0, {}
        return cursor, leases

    def take(self, count: int) -> list[int]:
        """`count` different ports, each free now and handed to no one else within the lease."""
        if count <= 0:
            return []
        size = len(self.ports)
        with self._locked() as f:
            cursor, leases = self._read(f)
            now = time.time()
            leases = {p: t for p, t in leases.items() if t > now and p in self.ports}
            start = self.ports.index(cursor) if cursor in self.ports else 0
            picked: list[int] = []
            for step in range(size):
                port = self.ports[(start + step) % size]
                if port not in leases and bindable(port):
                    picked.append(port)
                    leases[port] = now + self.lease_s
                    if len(picked) == count:
                        cursor = self.ports[(start + step + 1) % size]
                        break
            else:
                raise HarnessError(
                    f"only {len(picked)} of {count} ports free among the {size} from {min(self.ports)} to "
                    f"{max(self.ports)} (the others are in use, or leased for {self.lease_s:.0f} s "
                    f"in {self.state})"
                )
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"next": cursor, "leases": {str(p): t for p, t in sorted(leases.items())}}))
            f.flush()
        return picked


def free_ports(count: int) -> list[int]:
    """`count` different ports nothing listens on, outside the ephemeral range, and leased to this
    caller: no other caller of this module in this network namespace gets them within `LEASE_S`."""
    return PortPicker().take(count)


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def listening(port: int, host: str = HOST) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True

"""Free ports on loopback, and whether something listens on one."""

from __future__ import annotations

import socket

__all__ = ["HOST", "free_port", "free_ports", "listening"]

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now. All are held open together while the kernel picks them,
    so the `count` ports differ from each other."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def listening(port: int, host: str = HOST) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True

"""The virtual board's fast clock against a peer that answers in real time (hil/virtual/vnet.py), run
in CPython on a socket pair, host time faked: deterministic, no board process.

Seen under load (load average 10-17 on 2 cores): a board at clock_speed 10 with keepalive 5 s
reconnected once (health reconnects 1), because its PINGRESP wait (keepalive / 2 = 2.5 s of board
time) was 250 ms of host time, and a starved broker or board process took longer than that to get
the answer across. A real ESP32 gives its broker the full 2.5 s. While the board waits for its
peer, its clock must run at the peer's pace."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from hil.virtual import vnet

PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"
SPEED = 10
KEEPALIVE_MS = 5000


class _Host:
    ms = 1_000_000


class _PortSocket:
    """A CPython socket with the unix port's stream methods, which the board layer moves bytes with
    (readinto(buf, n), write(buf, off, n); None when a non-blocking socket has nothing to move)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def close(self) -> None:
        self.sock.close()

    def readinto(self, buf: bytearray | memoryview, n: int = -1) -> int | None:
        try:
            return self.sock.recv_into(buf, max(0, n))
        except BlockingIOError:
            return None

    def write(self, buf: bytes | bytearray | memoryview, off: int = 0, n: int = -1) -> int | None:
        try:
            return self.sock.send(memoryview(buf)[off : len(buf) if n < 0 else off + n])
        except BlockingIOError:
            return None


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> _Host:
    h = _Host()
    monkeypatch.setattr(vnet, "host_ms", lambda: h.ms)
    return h


@pytest.fixture
def link(host: _Host) -> Iterator[tuple[vnet.VSocket, socket.socket, vnet.Clock]]:  # noqa: ARG001 (it sets the host clock)
    clock = vnet.Clock(SPEED, 0, "")
    board = SimpleNamespace(
        clock=clock,
        spec=SimpleNamespace(seed=1, short_write_every=0),
        net=SimpleNamespace(up=lambda: True, seen_up=lambda: True),
        check_watchdog=lambda: None,
    )
    ours, broker = socket.socketpair()
    stream = vnet.VSocket(_PortSocket(ours), board)  # type: ignore[arg-type]
    stream.raw_settimeout(vnet.IO_TIMEOUT_S)
    stream._raw.connected()  # as Board.connect_tcp leaves it
    yield stream, broker, clock
    stream.close()
    broker.close()


def test_a_reply_the_broker_sends_in_400_ms_takes_400_ms_of_board_time(
    host: _Host, link: tuple[vnet.VSocket, socket.socket, vnet.Clock]
) -> None:
    stream, broker, clock = link
    sent = clock.ticks_ms()
    assert stream.write(PINGREQ) == 2
    assert broker.recv(2) == PINGREQ
    host.ms += 400  # the loaded host: the broker's answer comes 400 ms later
    broker.sendall(PINGRESP)
    assert stream.read(2) == PINGRESP
    waited = clock.ticks_ms() - sent
    # Before: 4000 ms at speed 10, past the firmware's keepalive / 2 and a reconnect.
    assert waited == 400 < KEEPALIVE_MS // 2


def test_the_clock_runs_fast_again_once_the_answer_is_read(
    host: _Host, link: tuple[vnet.VSocket, socket.socket, vnet.Clock]
) -> None:
    stream, broker, clock = link
    host.ms += 100  # idle: nothing owed
    assert clock.ticks_ms() == 100 * SPEED
    stream.write(PINGREQ)
    host.ms += 100
    broker.sendall(PINGRESP)
    stream.read(2)
    at = clock.ticks_ms()
    assert at == 100 * SPEED + 100
    host.ms += 100
    assert clock.ticks_ms() == at + 100 * SPEED
    # A read timeout while idle is still virtual: 1 s of board time is 100 ms of host time (a call
    # that may block waits in board time, vnet.VRaw._waited).
    assert clock.real_s(vnet.IO_TIMEOUT_S * 1000) == pytest.approx(vnet.IO_TIMEOUT_S / SPEED)


def test_a_packet_the_broker_does_not_answer_leaves_the_clock_fast(
    host: _Host, link: tuple[vnet.VSocket, socket.socket, vnet.Clock]
) -> None:
    """A QoS 0 PUBLISH (health, birth) gets no answer: holding the clock for it would slow the board
    until whatever the broker sends next. Framing is followed across short writes."""
    stream, broker, clock = link
    topic = b"sensors/k/d/health"
    qos0 = bytes([0x30, 2 + len(topic) + 3, 0, len(topic)]) + topic + b"{ }"
    pingreq_after = qos0 + PINGREQ
    for i in range(len(pingreq_after)):  # byte by byte, as the shortest of short writes
        assert stream.write(pingreq_after[i : i + 1]) == 1
        at = clock.ticks_ms()
        host.ms += 10
        # Fast while the QoS 0 packet goes out; held once the PINGREQ's header is complete.
        assert clock.ticks_ms() - at == (10 if i == len(pingreq_after) - 1 else 10 * SPEED)
    assert broker.recv(64) == pingreq_after
    qos1 = bytes([0x32, 2 + len(topic) + 2 + 3, 0, len(topic)]) + topic + b"\x00\x01{ }"
    broker.sendall(PINGRESP)
    stream.read(2)
    stream.write(qos1)
    at = clock.ticks_ms()
    host.ms += 100
    assert clock.ticks_ms() - at == 100  # a QoS 1 PUBLISH waits for its PUBACK: held


def test_a_closed_link_releases_the_clock(
    host: _Host, link: tuple[vnet.VSocket, socket.socket, vnet.Clock]
) -> None:
    stream, _broker, clock = link
    stream.write(PINGREQ)
    stream.close()  # the firmware gave up on the answer
    at = clock.ticks_ms()
    host.ms += 100
    assert clock.ticks_ms() == at + 100 * SPEED

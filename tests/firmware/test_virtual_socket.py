"""The virtual board's socket behaves like the ESP32 port's: newlib errno, timeouts raise, short writes.

Each check runs the board layer on the MicroPython unix port against a real TCP listener.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import fleet
from tests.firmware import unixport

pytestmark = pytest.mark.unit


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server that accepts one client and records what it sends, never answering."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                got.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], got
    srv.close()
    thread.join(5)


def _spec(tmp_path: Path, **extra: object) -> Path:
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    spec = {"env": fleet.environment("kitchen"), "control_dir": str(control), "wifi_assoc_ms": 0, **extra}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _run(tmp_path: Path, code: str, heap: str = "256K", **spec: object) -> object:
    path = _spec(tmp_path, **spec)
    return unixport.run_json(f"import os\nos.putenv('VBOARD_SPEC', {str(path)!r})\n" + code, tmp_path, heap)


def test_idle_read_raises_etimedout_116_and_never_returns_none(
    tmp_path: Path, listener: tuple[int, list[bytes]]
) -> None:
    port, _ = listener
    code = f"""
import json
from vboard import Board
b = Board()
b.wifi_start("", "")  # associated at once (wifi_assoc_ms 0)
s = b.connect_tcp(b.resolve("127.0.0.1", {port}), 2000)
s.settimeout(0.2)
out = []
for call in ("read", "readinto"):
    try:
        r = s.read(1) if call == "read" else s.readinto(bytearray(1))
        out.append(repr(r))
    except OSError as exc:
        out.append(exc.args[0])
s.settimeout(0)
out.append(repr(s.read(1)))  # non-blocking: None is the port's answer there, and only there
print(json.dumps(out))
"""
    assert _run(tmp_path, code) == [116, 116, "None"]


def test_the_board_errno_module_holds_the_esp32_values(tmp_path: Path) -> None:
    """Firmware that looks an errno up at run time sees newlib's numbers, as on an ESP32. (The unix
    port's compiler folds `errno.NAME` of its own built-in module into Linux's number when it
    compiles source; .mpy files look it up.)"""
    code = """
import json
from vboard import Board
import errno
print(json.dumps([getattr(errno, "ETIMEDOUT"), getattr(errno, "EHOSTUNREACH"), getattr(errno, "ECONNRESET")]))
"""
    assert _run(tmp_path, code) == [116, 118, 104]


def test_blocking_writes_move_everything_and_only_non_blocking_ones_are_short(
    tmp_path: Path, listener: tuple[int, list[bytes]]
) -> None:
    """py/stream.c loops a write until all of it is sent; only a non-blocking socket (EAGAIN)
    returns a short count. Before: the virtual socket returned short counts with a timeout set,
    which the port never does."""
    port, _got = listener
    code = f"""
import json
from vboard import Board
b = Board()
b.wifi_start("", "")  # associated at once (wifi_assoc_ms 0)
s = b.connect_tcp(b.resolve("127.0.0.1", {port}), 2000)
blocking = [s.write(bytes(100)) for _ in range(30)]
s.setblocking(False)
counts = [s.write(bytes(100)) for _ in range(30)]
print(json.dumps([blocking, counts]))
"""
    result = _run(tmp_path, code, seed=7)
    assert isinstance(result, list)
    blocking, counts = result
    assert blocking == [100] * 30
    assert all(1 <= c <= 100 for c in counts)
    assert any(c < 100 for c in counts) and any(c == 100 for c in counts)
    assert result == _run(tmp_path, code, seed=7)  # deterministic per board seed


def test_a_timeout_after_partial_progress_raises_116_and_the_bytes_are_consumed(tmp_path: Path) -> None:
    """micropython issue 3155, py/stream.c: readinto(buf, 10) with 5 bytes there and then a stall
    raises OSError(ETIMEDOUT); the 5 bytes are gone from the stream, not reported. Before: a short
    count of 5 came back."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"01234")
            conn.recv(1)  # the board says it is done
            conn.sendall(b"56789")
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    code = f"""
import json
from vboard import Board
b = Board()
b.wifi_start("", "")  # associated at once (wifi_assoc_ms 0)
s = b.connect_tcp(b.resolve("127.0.0.1", {srv.getsockname()[1]}), 2000)
buf = bytearray(10)
out = []
try:
    out.append(s.readinto(buf, 10))
except OSError as exc:
    out.append(exc.args[0])
out.append(bytes(buf[:5]).decode())
s.write(b"x")
b.poller(s).readable(2000)
out.append(s.readinto(buf, 5))
out.append(bytes(buf[:5]).decode())
s.write(b"x")
print(json.dumps(out))
"""
    try:
        assert _run(tmp_path, code) == [116, "01234", 5, "56789"]
    finally:
        srv.close()
        thread.join(5)


def test_cut_network_raises_ehostunreach_118_and_refused_connect_is_econnreset_104(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    code = f"""
import json
from vboard import Board
b = Board()
b.wifi_start("", "")  # associated at once (wifi_assoc_ms 0)
out = []
try:
    b.connect_tcp(b.resolve("127.0.0.1", {closed_port}), 2000)
except OSError as exc:
    out.append(exc.args[0])
open("{tmp_path}/control/net_down", "w").close()
try:
    b.connect_tcp(b.resolve("127.0.0.1", {closed_port}), 2000)
except OSError as exc:
    out.append(exc.args[0])
print(json.dumps(out))
"""
    assert _run(tmp_path, code) == [104, 118]  # lwIP files a refused connect (RST) as ECONNRESET


def test_ticks_add_overflows_like_the_port_beyond_2_pow_29_ms(tmp_path: Path) -> None:
    code = """
import json
from vboard import Board
b = Board()
b.wifi_start("", "")  # associated at once (wifi_assoc_ms 0)
out = [b.ticks_add(0, (1 << 29) - 1)]
try:
    b.ticks_add(0, 604800 * 1000)
except OverflowError:
    out.append("overflow")
print(json.dumps(out))
"""
    assert _run(tmp_path, code) == [(1 << 29) - 1, "overflow"]


def test_reads_and_writes_go_through_the_callers_buffer_without_allocating(tmp_path: Path) -> None:
    """The port reads into the caller's buffer (modsocket.c: lwip_recvfrom(fd, buf, size)) and writes
    from it: a call allocates nothing on the Python heap. Before: the virtual socket received into a
    new bytes object of the buffer's size (1,085 bytes for an update's chunk, a MemoryError on a
    board whose heap the chunk already filled) and sliced memoryviews per call."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            for _ in range(3):
                conn.sendall(bytes(1085))
                conn.recv(1)  # the board read it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    code = f"""
import gc, json
from vboard import Board
b = Board()
b.wifi_start("", "")  # associated at once (wifi_assoc_ms 0)
s = b.connect_tcp(b.resolve("127.0.0.1", {srv.getsockname()[1]}), 2000)
s.setblocking(False)
p = b.poller(s)
buf = bytearray(1800)
mv = memoryview(buf)
one = b"x"
out = []
for blocking in (False, False, True):
    s.setblocking(blocking)
    p.readable(2000)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    got = s.readinto(mv, 1085)
    read = gc.mem_alloc() - before
    before = gc.mem_alloc()
    s.write(one, 0, 1)
    wrote = gc.mem_alloc() - before
    gc.enable()
    out.append([got, read, wrote])
print(json.dumps(out))
"""
    try:
        out = _run(tmp_path, code)
    finally:
        srv.close()
        thread.join(5)
    assert out == [[1085, 0, 0]] * 3, out

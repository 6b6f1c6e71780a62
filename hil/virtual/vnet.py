"""The virtual board's clock and network: virtual time and sockets with the ESP32 port's semantics.

Kept apart from vboard.py so that neither module is large to compile on a 136 KB heap.
"""

import io
import os
import select
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hil.virtual.vboard import Board

# The ESP32 port uses newlib's errno values (MICROPY_USE_INTERNAL_ERRNO 0), not Linux's: a board
# sees these, whatever the host's socket said.
EAGAIN = 11
ECONNRESET = 104
ETIMEDOUT = 116
EHOSTUNREACH = 118
EINPROGRESS = 119
ECONNREFUSED = 111
ECONNABORTED = 113
ENOTCONN = 128
EPIPE = 32


class Newlib:
    """The ESP32 port's `errno` values (newlib's) for the errors this socket raises and the firmware
    handles; not the port's whole module: every entry costs the board's heap.

    vboard installs it as sys.modules["errno"], so firmware that looks a value up at run time sees
    the board's, as on an ESP32. (The unix port's compiler folds `errno.NAME` of its own built-in
    module into Linux's number at compile time, which no run-time module can change: firmware
    source meant for both must look the names up, firmware/mqtt.py does.)"""

    ENOENT = 2
    EIO = 5
    EAGAIN = EAGAIN
    ENODEV = 19
    ECONNABORTED = ECONNABORTED
    ECONNRESET = ECONNRESET
    ENOTCONN = ENOTCONN
    ETIMEDOUT = ETIMEDOUT
    ECONNREFUSED = ECONNREFUSED
    EHOSTUNREACH = EHOSTUNREACH
    EINPROGRESS = EINPROGRESS


_HOST_TO_NEWLIB = {110: ETIMEDOUT, 113: EHOSTUNREACH, 115: EINPROGRESS, 103: ECONNABORTED, 107: ENOTCONN}
_HOST_TIMEOUT = (110, 11)  # the unix port reports an SO_RCVTIMEO expiry as either
IO_TIMEOUT_S = 1
SLICE_REAL_MS = 50  # longest real wait between watchdog checks inside a board call


TICKS_PERIOD = 1 << 30
JUMP_STEP_MS = 600_000  # 10 min: far inside the 2^29 ms a tick difference can span


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def host_ms() -> int:
    return time.time_ns() // 1000000


def exists(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


class Clock:
    """Virtual time: real elapsed time x `speed`, plus jumps a test asks for.

    A jump (`<control_dir>/clock_jump_ms` holding a number of ms; the board deletes the file once
    read) moves what the firmware sees (ticks, RTC) forward, as if the board had been up that much
    longer. It is fed in by at most JUMP_STEP_MS per clock read, so the firmware's loop sees time
    racing by (a board that really ran for days saw every tick) rather than one leap past the
    2^29 ms range of a tick difference. `run_ms` leaves jumps out, so the watchdog, which runs on
    its own timer, is not tripped by time the firmware never spent.
    """

    def __init__(self, speed: float, ticks_start_ms: int, control_dir: str) -> None:
        self.speed = speed  # while the board waits for nobody
        self._rate = speed  # virtual ms per real ms now
        self._host0 = host_ms()
        self._run0 = 0  # virtual ms at _host0
        self._holds = 0
        self._ticks0 = ticks_start_ms
        self.jumped_ms = 0
        self._pending_ms = 0
        self._jump_file = control_dir + "/clock_jump_ms" if control_dir else ""
        self._next_look = 0

    def run_ms(self) -> int:
        """Virtual ms since power-on, without jumps."""
        return self._run0 + int((host_ms() - self._host0) * self._rate)

    def hold(self, on: bool) -> None:
        """Run at host speed while held (on) until as many releases (not on): the board waits for the
        world outside (a broker's answer), which answers in real time. A faster clock would make a
        reply the broker sends in 250 ms look 2.5 s late at speed 10, which no real board sees."""
        self._holds += 1 if on else -1
        rate = 1 if self._holds else self.speed
        if rate != self._rate:
            host = host_ms()
            self._run0 += int((host - self._host0) * self._rate)
            self._host0, self._rate = host, rate

    def now_ms(self) -> int:
        """Virtual ms since power-on, jumps included (what the firmware's clocks count)."""
        if self._jump_file:
            host = host_ms()
            if host >= self._next_look:  # a stat per call would dominate a busy loop
                self._next_look = host + 100
                text = read_text(self._jump_file)
                if text:
                    self._pending_ms += int(text)
                    os.remove(self._jump_file)
                    print("clock_jump by_ms=" + text)
        if self._pending_ms:
            step = min(self._pending_ms, JUMP_STEP_MS)
            self._pending_ms -= step
            self.jumped_ms += step
            if not self._pending_ms:
                print("clock_jumped total_ms=" + str(self.jumped_ms))
        return self.run_ms() + self.jumped_ms

    def ticks_ms(self) -> int:
        return (self._ticks0 + self.now_ms()) % TICKS_PERIOD

    def real_s(self, virtual_ms: float) -> float:
        return virtual_ms / self._rate / 1000


class _Rand:
    """xorshift32: a deterministic sequence per board seed (short writes repeat run to run)."""

    def __init__(self, seed: int) -> None:
        self._x = (seed * 2654435761) & 0xFFFFFFFF or 1

    def next(self) -> int:
        x = self._x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._x = x
        return x


class VSocket(io.IOBase):
    """A socket with the ESP32 port's stream semantics (modsocket.c, py/stream.c).

    - errno values are newlib's (116 for a timeout, 118 for an unreachable host);
    - with a timeout set, a read that gets nothing in time raises OSError(ETIMEDOUT), it never
      returns None (None is only for a non-blocking socket, timeout 0);
    - a write may send fewer bytes than asked and say so in its return value (lwIP's send buffer);
    - with the network cut, every call raises EHOSTUNREACH;
    - `ioctl` gives select.poll the host descriptor, so the firmware can poll it like on a board.
    Timeouts are virtual: they pass `clock_speed` times faster in real time, except while the board
    waits for its peer: from the moment it writes an MQTT packet that the broker answers (CONNECT,
    PUBLISH QoS 1/2, SUBSCRIBE, UNSUBSCRIBE, PINGREQ) until it reads a byte, the clock runs at host
    speed (Clock.hold), so the broker's real delays are what the firmware measures. (The stream
    carries MQTT only: Board.connect_tcp is the firmware's link to the broker.)
    """

    def __init__(self, sock: socket.socket, board: "Board", tls: object = None) -> None:
        self._sock = sock
        self._tls = tls  # the unix port's mbedTLS socket over sock, or None
        self._io: Any = tls if tls is not None else sock
        self._board = board
        self._timeout: float | None = None
        self._rand = _Rand(board.spec.seed)
        self._short_every = board.spec.short_write_every
        self.short_writes = 0
        self.is_closed = False
        self._awaiting = False  # an answer is owed since the last byte read: the clock is held
        # Framing of what the board writes: the packet's first byte, its remaining length as read
        # so far (and the varint's multiplier, 0 while at a packet boundary), body bytes to skip.
        self._kind = 0
        self._len = 0
        self._mul = 0
        self._skip = 0

    def _frame(self, view: memoryview, i: int, n: int) -> None:
        """Follow MQTT framing over the bytes written (view[i:n]); hold the clock once a packet's
        fixed header says the broker will answer it."""
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
            elif not self._mul:
                self._kind, self._len, self._mul = view[i], 0, 1
                i += 1
            else:
                b = view[i]
                i += 1
                self._len += (b & 127) * self._mul
                self._mul *= 128
                if b < 128:
                    self._mul, self._skip = 0, self._len
                    t = self._kind >> 4
                    if t in (1, 8, 10, 12) or (t == 3 and self._kind & 6):
                        self._await(True)

    def _await(self, on: bool) -> None:
        if on != self._awaiting:
            self._awaiting = on
            self._board.clock.hold(on)
            if self._timeout is not None and not self.is_closed:  # host timeout follows the rate
                self._sock.settimeout(self._board.clock.real_s(self._timeout * 1000))

    def _guard(self) -> None:
        self._board.check_watchdog()
        if self.is_closed:
            raise OSError(9)  # EBADF
        if not self._board.net.up():
            self._sock.close()
            self.is_closed = True
            self._await(False)
            raise OSError(EHOSTUNREACH)

    def pollable(self) -> object:
        """What select.poll should watch: the TLS object knows about decrypted bytes it holds."""
        return self._tls if self._tls is not None else self

    def settimeout(self, t: float | None) -> None:
        if self._tls is not None:
            # As on the port before 1.24: a TLS socket has no settimeout (set it on the raw one).
            raise AttributeError("'SSLSocket' object has no attribute 'settimeout'")
        self.raw_settimeout(t)

    def raw_settimeout(self, t: float | None) -> None:
        self._timeout = t
        self._sock.settimeout(None if t is None else self._board.clock.real_s(t * 1000))

    def fileno(self) -> int:
        return self._sock.fileno()

    def ioctl(self, req: int, arg: int) -> int:
        if req == 10:  # MP_STREAM_GET_FILENO: select.poll then polls the host socket directly
            return self.fileno()
        return -1

    def _error(self, exc: OSError) -> OSError:
        code = exc.args[0] if exc.args else 0
        if code in _HOST_TIMEOUT:
            return OSError(ETIMEDOUT if self._timeout else EAGAIN)
        return OSError(_HOST_TO_NEWLIB.get(code, code))

    def write(self, buf: "bytes | bytearray | memoryview", *args: int) -> int | None:
        """The port's stream write (py/stream.c): write(buf), write(buf, max_len) or write(buf, off,
        max_len), off clamped to the buffer."""
        self._guard()
        view = memoryview(buf)
        if args:
            off, max_len = (0, args[0]) if len(args) == 1 else (min(args[0], len(view)), args[1])
            view = view[off : off + max_len]
        n = len(view)
        if self._short_every and n > 1 and self._rand.next() % self._short_every == 0:
            n = 1 + self._rand.next() % (n - 1)  # lwIP took only part of it
            self.short_writes += 1
        sent = 0
        try:
            while sent < n:
                k = self._io.write(view[sent:n]) if self._tls is not None else self._sock.send(view[sent:n])
                if k:
                    self._frame(view, sent, sent + k)
                    sent += k
        except OSError as exc:
            if sent:
                return sent
            err = self._error(exc)
            if err.args[0] == EAGAIN:
                return None  # non-blocking stream: nothing written
            raise err from None
        return sent

    def read(self, n: int) -> bytes | None:
        self._guard()
        try:
            data: bytes = self._io.read(n) if self._tls is not None else self._sock.recv(n)
            if data is None:
                raise OSError(ETIMEDOUT if self._timeout else EAGAIN)
            self._await(False)  # the peer answered (or closed: b"")
        except OSError as exc:
            err = self._error(exc)
            if err.args[0] == EAGAIN:
                return None  # non-blocking stream with nothing there
            raise err from None
        return data

    def readinto(self, buf: "bytearray | memoryview", nbytes: int = -1) -> int | None:
        want = len(buf) if nbytes < 0 else min(nbytes, len(buf))
        data = self.read(want)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.is_closed = True
        self._await(False)
        if self._tls is not None:
            try:
                self._io.close()
            except OSError as exc:
                print("tls_close_failed error=" + str(exc))
        self._sock.close()


class Poller:
    """select.poll over one socket, in virtual time, checking the watchdog while it waits."""

    def __init__(self, board: "Board", stream: VSocket) -> None:
        self._board = board
        self._stream = stream
        self._poll = select.poll()
        self._poll.register(stream.pollable(), select.POLLIN)  # type: ignore[arg-type]

    def readable(self, timeout_ms: int) -> bool:
        """True when a read would not block (data, EOF or an error to report), within timeout_ms."""
        board = self._board
        deadline = board.clock.run_ms() + max(0, timeout_ms)
        while True:
            board.check_watchdog()
            if self._stream.is_closed or not board.net.up():
                return True  # the read reports it
            left = deadline - board.clock.run_ms()
            real_ms = min(SLICE_REAL_MS, max(0, int(board.clock.real_s(left) * 1000)))
            for _obj, _ev in self._poll.ipoll(real_ms):  # type: ignore[attr-defined]
                return True
            if left <= 0:
                return False

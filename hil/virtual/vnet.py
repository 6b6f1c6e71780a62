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


# A refused connect (the peer's RST) is ECONNRESET on the port: lwIP files ERR_RST as 104.
_HOST_TO_NEWLIB = {
    110: ETIMEDOUT, 113: EHOSTUNREACH, 115: EINPROGRESS, 103: ECONNABORTED, 107: ENOTCONN, 111: ECONNRESET,
}
_HOST_TIMEOUT = (110, 11)  # the unix port reports an SO_RCVTIMEO expiry as either
IO_TIMEOUT_S = 1
SLICE_REAL_MS = 50  # longest real wait between watchdog checks inside a board call


def newlib_error(exc: OSError) -> OSError:
    """A host socket error as the ESP32 port raises it (newlib's numbers)."""
    code = exc.args[0] if exc.args else 0
    return OSError(_HOST_TO_NEWLIB.get(code, code))


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
        self._milli = round(speed * 1000)  # the same per 1000 real ms: run_ms in ints, no float per call
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
        return self._run0 + (host_ms() - self._host0) * self._milli // 1000

    def hold(self, on: bool) -> None:
        """Run at host speed while held (on) until as many releases (not on): the board waits for the
        world outside (a broker's answer), which answers in real time. A faster clock would make a
        reply the broker sends in 250 ms look 2.5 s late at speed 10, which no real board sees."""
        self._holds += 1 if on else -1
        rate = 1 if self._holds else self.speed
        if rate != self._rate:
            host = host_ms()
            self._run0 += (host - self._host0) * self._milli // 1000
            self._host0, self._rate, self._milli = host, rate, round(rate * 1000)

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


SND_BUF = 5744  # lwIP's TCP send buffer on the ESP32 port (CONFIG_LWIP_TCP_SND_BUF_DEFAULT)
EBADF = 9
_POLL_RD, _POLL_WR, _POLL_NVAL = 1, 4, 0x20


class VRaw(io.IOBase):
    """The port's socket seen from below the stream layer: one call is what modsocket.c's
    socket_stream_read / socket_stream_write do once (lwIP, retried until the socket's timeout).
    It answers as a Python stream answers MicroPython's stream layer: a count, None (EAGAIN: a
    non-blocking socket with nothing to move), or a negative errno (-116 when the timeout passed,
    -104 for a connection the peer reset). mbedTLS reads and writes through it, as through the
    raw socket on the port, so a timeout under TLS becomes the session's sticky error there too.

    Bytes move between the host socket and the caller's buffer, as lwip_recvfrom(fd, buf, size) and
    lwip_write do on the port: a call allocates nothing on the board's heap. Once connected the host
    socket is non-blocking; a call that may block waits in virtual time for it (the timeout, at the
    clock's rate), then moves what is there.

    Wi-Fi loss is lwIP's: an open socket raises nothing; nothing arrives, and writes go into the
    send buffer (SND_BUF) until it is full, then block. The host connection is closed at once, so
    the broker notices now (a real broker waits 1.5 keepalives); when Wi-Fi comes back the peer has
    forgotten the connection and the next call gets ECONNRESET (104)."""

    def __init__(self, sock: socket.socket, board: "Board") -> None:
        self.sock = sock
        self._board = board
        self.timeout: float | None = None  # board seconds; 0: non-blocking
        self.live = False  # connected: the host socket is non-blocking from then on
        self.shut = False
        self.silent = False
        self.reset = False
        self.queued = 0  # bytes lwIP holds while the link is silent
        self._rand = _Rand(board.spec.seed)
        self._short_every = board.spec.short_write_every
        self.short_writes = 0
        self._full = False
        self._hpoll = select.poll()
        self._hpoll.register(sock, select.POLLIN)
        self._wpoll: Any = None  # POLLOUT, made when a blocking write first has to wait

    def apply_timeout(self) -> None:
        """Before the connect is done: the host's connect waits as long as the board's would."""
        t = self.timeout
        if not self.live and not self.shut and not self.silent:
            self.sock.settimeout(None if t is None else 0 if t == 0 else self._board.clock.real_s(t * 1000))

    def connected(self) -> None:
        self.live = True
        self.sock.setblocking(False)

    def _state(self) -> int:
        """0 if the socket can move bytes now, else what a call reports (as a positive errno)."""
        board = self._board
        board.check_watchdog()
        if self.shut:
            return EBADF
        if not board.net.seen_up():
            if not self.silent:
                self.silent = True
                self.sock.close()
        elif self.silent and not self.reset:
            self.reset = True
        if self.reset:
            return ECONNRESET
        return 0

    def _stall(self) -> int | None:
        """Nothing moves: a non-blocking socket says EAGAIN, a blocking one waits out its timeout."""
        if self.timeout == 0:
            return None
        self._board.block_ms(int((self.timeout or 3600) * 1000))
        return -ETIMEDOUT

    def _deadline(self) -> int:
        return self._board.clock.run_ms() + int((self.timeout or 3600) * 1000)

    def _waited(self, poll: "Any", deadline: int) -> bool:
        """A blocking call found nothing to move: wait a slice for the host socket; False once the
        timeout passed."""
        clock = self._board.clock
        left = deadline - clock.run_ms()
        if left <= 0:
            return False
        for _obj, _ev in poll.ipoll(min(SLICE_REAL_MS, max(1, int(clock.real_s(left) * 1000)))):
            break
        return True

    def readinto(self, buf: "bytearray | memoryview", nbytes: int = -1) -> int | None:
        err = self._state()
        if err:
            return -err
        if self.silent:
            return self._stall()
        return self._move(buf, 0, nbytes, False)

    def write(self, buf: "bytes | bytearray | memoryview", off: int = 0, n: int = -1) -> int | None:
        err = self._state()
        if err:
            return -err
        if n < 0:
            n = len(buf) - off
        if self.silent:
            room = SND_BUF - self.queued
            if room <= 0:
                return self._stall()
            self.queued += min(room, n)
            return min(room, n)
        if self.timeout == 0:
            if self._full:
                self._full = False
                return None  # the send buffer filled up with the last call's bytes: EAGAIN
            if self._short_every and n > 1 and self._rand.next() % self._short_every == 0:
                n = 1 + self._rand.next() % (n - 1)  # lwIP's send buffer took only part of it
                self._full = True
                self.short_writes += 1
        return self._move(buf, off, n, True)

    def _move(self, buf: "bytes | bytearray | memoryview", off: int, n: int, writing: bool) -> int | None:
        """The one host call of a read (into `buf`, at most `n` bytes, all of it for -1; `off` is 0) or
        a write (`buf[off:off + n]`), once the link is up: a blocking call that finds nothing to move
        waits in virtual time for the host socket (up to its timeout) and tries again, looking at the
        link after each wait, since Wi-Fi may have gone meanwhile. Arguments, not a closure per call:
        the call allocates nothing on the board's heap."""
        # (MicroPython's socket: a stream with readinto and write(buf, off, n))
        sock: Any = self.sock
        deadline = -1
        while True:
            try:
                if writing:
                    moved: int | None = sock.write(buf, off, n)
                else:
                    moved = sock.readinto(buf) if n < 0 else sock.readinto(buf, n)
            except OSError as exc:
                return self._host_error(exc)
            if moved is not None or self.timeout == 0:
                return moved
            if deadline < 0:
                deadline = self._deadline()
                if writing and self._wpoll is None:
                    self._wpoll = select.poll()
                    self._wpoll.register(sock, select.POLLOUT)
            if not self._waited(self._wpoll if writing else self._hpoll, deadline):
                return -ETIMEDOUT
            err = self._state()
            if err:
                return -err
            if self.silent:
                return self._stall()

    def _host_error(self, exc: OSError) -> int | None:
        code = exc.args[0] if exc.args else 0
        if code in _HOST_TIMEOUT:
            return None if self.timeout == 0 else -ETIMEDOUT
        return -_HOST_TO_NEWLIB.get(code, code)

    def readable_now(self) -> bool:
        """A read would not block: bytes, EOF or an error to report."""
        if self._state() or self.shut:
            return True
        if self.silent:
            return False
        for _obj, _ev in self._hpoll.ipoll(0):  # type: ignore[attr-defined]
            return True
        return False

    def wait(self, real_ms: int) -> None:
        """Wait at most real_ms of host time for bytes (returns early when some arrive)."""
        if self.silent or self.shut:
            time.sleep(real_ms / 1000)
            return
        for _obj, _ev in self._hpoll.ipoll(real_ms):  # type: ignore[attr-defined]
            return

    def ioctl(self, req: int, arg: int) -> int:
        if req == 3:  # MP_STREAM_POLL, asked by the TLS layer
            if self.shut:
                return _POLL_NVAL
            ready = _POLL_RD if arg & _POLL_RD and self.readable_now() else 0
            if arg & _POLL_WR and (not self.silent or self.queued < SND_BUF):
                ready |= _POLL_WR
            return ready
        if req == 4:  # MP_STREAM_CLOSE
            self.close()
            return 0
        return -22  # EINVAL: no descriptor to hand out, the stream layer polls through ioctl

    def close(self) -> None:
        if not self.shut:
            self.shut = True
            if not self.silent:
                self.sock.close()


class VSocket(io.IOBase):
    """The socket the firmware holds, with the ESP32 port's stream semantics (py/stream.c over
    modsocket.c, or over modtls_mbedtls.c for TLS):

    - errno values are newlib's (116 for a timeout, 104 for a reset);
    - `readinto(buf, n)` and `write(buf[, off], n)` loop until all n bytes moved (mp_stream_rw); a
      timeout on the way raises OSError(ETIMEDOUT) and the bytes already moved are consumed and not
      reported (micropython issue 3155). Only a non-blocking socket (timeout 0) returns a short
      count, or None when nothing moved (EAGAIN);
    - TLS: a timeout (or any socket error) under TLS is the session's sticky error; every later call
      raises it, spelled as the profile's version spells it (OSError(-116) through 1.27); a TLS
      socket has no settimeout (AttributeError), only setblocking;
    - Wi-Fi loss is silent (VRaw).
    Timeouts are virtual: they pass `clock_speed` times faster in real time, except while the board
    waits for its peer: from the moment it writes an MQTT packet that the broker answers (CONNECT,
    PUBLISH QoS 1/2, SUBSCRIBE, UNSUBSCRIBE, PINGREQ) until it reads a byte, the clock runs at host
    speed (Clock.hold), so the broker's real delays are what the firmware measures. (The stream
    carries MQTT only: Board.connect_tcp is the firmware's link to the broker.)
    """

    def __init__(
        self, sock: socket.socket, board: "Board", tls: object = None, raw: VRaw | None = None
    ) -> None:
        self._raw = raw if raw is not None else VRaw(sock, board)
        self._sock = sock
        self._tls: Any = tls  # the unix port's mbedTLS socket over self._raw, or None
        self._board = board
        self._tls_errno = board.profile["tls_timeout_errno"] if tls is not None else 0
        self._sticky = 0
        self.idf_held = 0  # bytes of the ESP-IDF heap its mbedTLS buffers hold (vtls)
        self._tpoll: Any = None
        if tls is not None:
            self._tpoll = select.poll()
            self._tpoll.register(tls, select.POLLIN)
        self._awaiting = False  # an answer is owed since the last byte read: the clock is held
        # Framing of what the board writes: the packet's first byte, its remaining length as read
        # so far (and the varint's multiplier, 0 while at a packet boundary), body bytes to skip.
        self._kind = 0
        self._len = 0
        self._mul = 0
        self._skip = 0

    @property
    def is_closed(self) -> bool:
        return self._raw.shut

    @property
    def short_writes(self) -> int:
        return self._raw.short_writes

    def _frame(self, view: "bytes | bytearray | memoryview", i: int, n: int) -> None:
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
            self._raw.apply_timeout()  # the host timeout follows the clock's rate

    def settimeout(self, t: float | None) -> None:
        if self._tls is not None:
            # As on the port 1.22-1.27: a TLS socket has no settimeout (set it on the raw one).
            raise AttributeError("'SSLSocket' object has no attribute 'settimeout'")
        self.raw_settimeout(t)

    def setblocking(self, flag: bool) -> None:
        self.raw_settimeout(None if flag else 0)

    def raw_settimeout(self, t: float | None) -> None:
        self._raw.timeout = t
        self._raw.apply_timeout()

    def fileno(self) -> int:
        return self._sock.fileno()

    def _tls_error(self, exc: OSError) -> OSError:
        """What the TLS socket raises, as the profile's port spells it: before 1.28 the stream
        raises the stored mbedTLS code as it is, an errno from the socket below negated."""
        code = exc.args[0] if exc.args else 0
        if isinstance(code, int) and 0 < code < 256 and self._tls_errno < 0:
            code = -code
        self._sticky = code
        return OSError(code)

    def _rw(self, buf: "bytes | bytearray | memoryview", off: int, want: int, writing: bool) -> int | None:
        """py/stream.c's mp_stream_rw over one VRaw call at a time, on the caller's buffer: only the
        rest of a blocking read that came in pieces needs a slice (the port passes a pointer)."""
        raw = self._raw
        done = 0
        while done < want:
            if writing:
                r = raw.write(buf, off + done, want - done)
            elif not done:
                r = raw.readinto(buf, want)  # type: ignore[arg-type]
            else:
                r = raw.readinto(memoryview(buf)[done:want])
            if r is None:  # EAGAIN: only a non-blocking socket gets here
                return done if done else None
            if r < 0:
                raise OSError(-r)  # the progress made so far is lost to the caller
            if r == 0:
                return done
            if writing:
                self._frame(buf, off + done, off + done + r)
            else:
                self._await(False)
            done += r
        return done

    def write(self, buf: "bytes | bytearray | memoryview", a: int = -1, b: int = -1) -> int | None:
        """The port's stream write: write(buf), write(buf, max_len) or write(buf, off, max_len)."""
        size = len(buf)
        off = 0
        want = size
        if b >= 0:  # (no tuples: the port's call allocates nothing)
            off = min(a, size)
            want = min(b, size - off)
        elif a >= 0:
            want = min(a, size)
        if self._tls is None:
            return self._rw(buf, off, want, True)
        self._board.check_watchdog()
        if self._sticky:
            raise OSError(self._sticky)
        try:
            n: int | None = self._tls.write(buf, off, want)
        except OSError as exc:
            raise self._tls_error(exc) from None
        if n:
            self._frame(buf, off, off + n)
        return n

    def readinto(self, buf: "bytearray | memoryview", nbytes: int = -1) -> int | None:
        want = len(buf) if nbytes < 0 else min(nbytes, len(buf))
        if self._tls is None:
            return self._rw(buf, 0, want, False)
        self._board.check_watchdog()
        if self._sticky:
            raise OSError(self._sticky)
        try:
            n: int | None = self._tls.readinto(buf, want)
        except OSError as exc:
            raise self._tls_error(exc) from None
        if n:
            self._await(False)
        return n

    def read(self, n: int) -> bytes | None:
        buf = bytearray(n)
        got = self.readinto(buf, n)
        return None if got is None else bytes(buf[:got])

    def readable_now(self) -> bool:
        if self._sticky or self._raw.shut:
            return True  # the port's poll says POLLNVAL / the read reports it
        if self._tpoll is not None:
            for _obj, _ev in self._tpoll.ipoll(0):  # mbedTLS holds decrypted bytes, or the socket has some
                return True
            return False
        return self._raw.readable_now()

    def close(self) -> None:
        self._await(False)
        if self._tls is not None and not self._raw.shut:
            try:
                self._tls.close()
            except OSError as exc:
                print("tls_close_failed error=" + str(exc))
        if self.idf_held:
            self._board.idf.free(self.idf_held)
            self.idf_held = 0
        self._raw.close()


class Poller:
    """select.poll over one socket, in virtual time, checking the watchdog while it waits."""

    def __init__(self, board: "Board", stream: VSocket) -> None:
        self._board = board
        self._stream = stream

    def readable(self, timeout_ms: int) -> bool:
        """True when a read would not block (data, EOF or an error to report), within timeout_ms."""
        board = self._board
        stream = self._stream
        deadline = board.clock.run_ms() + max(0, timeout_ms)
        while True:
            board.check_watchdog()
            if stream.readable_now():
                return True
            left = deadline - board.clock.run_ms()
            if left <= 0:
                return False
            stream._raw.wait(min(SLICE_REAL_MS, max(1, int(board.clock.real_s(left) * 1000))))

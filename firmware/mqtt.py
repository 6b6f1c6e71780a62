"""A small MQTT 3.1.1 client: publish QoS 0/1, subscribe QoS 0, last will, credentials, keepalive.

Written against the ESP32 port's socket semantics (read from its 1.22-1.26 sources, the same
facts mqtt_as is built on):
- once connected (and the TLS handshake done) the socket is non-blocking. A blocking socket's
  `readinto(buf, n)` and `write(buf, off, n)` loop until all n bytes moved (py/stream.c), and a
  timeout on the way raises OSError(ETIMEDOUT) with the bytes already moved consumed and not
  reported: a retry then desyncs the stream or sends bytes twice, and under TLS the timeout is the
  session's sticky error (OSError(-116) through 1.27). A non-blocking stream reports what it moved
  (a short count, or None for nothing), so a stall only costs time, bounded by each packet's deadline;
- reads only start once poll said readable; any OSError ends the session (reconnect, re-send);
- an incoming packet longer than MAX_PACKET_IN is read through and dropped (counted), never
  allocated, so a broker cannot make the board run out of heap.
Every wait has a deadline and feeds the watchdog (`board.feed()`) in slices of at most _SLICE_MS.
The hot path (publish, PUBACK, PINGREQ) writes from and reads into preallocated buffers.
"""

from micropython import const

import tlsctx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from board_esp32 import Board, Stream

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

# The longest packet expected: a gateway ack of 64 ranges (iot.contract.ACK_MAX_RANGES) of 10-digit
# seqs is ~1.6 KB plus its topic. Anything longer is read through and dropped, never allocated.
MAX_PACKET_IN = const(1800)
_TX_SIZE = const(640)  # header + longest topic (2 ids of 64) + pid + an outbox record's payload
_SLICE_MS = const(1000)  # longest wait between two watchdog feeds
_PACKET_MS = const(2000)
# A packet that has started must be complete within _PACKET_MS.
_RESOLVE_AFTER_FAILURES = const(5)  # look the broker up again: its address may have changed
_WRITE_WAIT_MS = const(10)  # a non-blocking write that moved nothing: lwIP's send buffer is full

_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


WIFI_LOST = "wifi_lost"  # MQTTError.kind when isconnected() turned false during a wait


class MQTTError(Exception):
    """The session is unusable; `kind` is a short code (connect_refused, timeout, closed, protocol,
    wifi_lost)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind + ": " + detail)
        self.kind = kind


def _errno(exc: OSError) -> int:
    return exc.args[0] if exc.args else 0


def _encode_str(out: bytearray, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    out.append(len(data) >> 8)
    out.append(len(data) & 0xFF)
    out.extend(data)


def _put_len(buf: bytearray, at: int, n: int) -> int:
    """Remaining length at buf[at:], returns the index after it."""
    while True:
        byte = n & 0x7F
        n >>= 7
        buf[at] = byte | 0x80 if n else byte
        at += 1
        if not n:
            return at


class Client:
    def __init__(
        self,
        board: Board,
        client_id: str,
        host: str,
        port: int,
        keepalive_s: int,
        user: str = "",
        password: str = "",
        tls: bool = False,
        tls_verify: bool = True,
        ca_file: str = "",
        will_topic: str = "",
        will_payload: bytes = b"",
        on_message: Callable[[memoryview, memoryview], None] | None = None,
    ) -> None:
        self._board = board
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self._user = user
        self._password = password
        self._tls = tls
        self._tls_verify = tls_verify
        self._ca_file = ca_file
        self._will_topic = will_topic
        self._will_payload = will_payload
        self._on_message = on_message
        self._sock: Stream | None = None
        self._poller: object = None
        self._pid = 0
        self._acked = -1
        self._suback = -1
        self._last_tx = 0
        self._ping_sent = 0
        self._ping_pending = False
        self._hdr = bytearray(1)
        self._hdrv = memoryview(self._hdr)
        self._small = bytearray(4)  # PUBACK/PINGREQ/DISCONNECT going out
        self._tx = bytearray(_TX_SIZE)
        self._rx = bytearray(MAX_PACKET_IN)
        self._rxv = memoryview(self._rx)
        self._rx_len = 0
        self.oversized = 0  # incoming packets dropped for length
        self._addr: tuple | None = None  # cached DNS answer
        self._failures = 0  # connects without CONNACK since the last lookup

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # --- connection -------------------------------------------------------------------------
    def connect(self, timeout_ms: int) -> None:
        self.close()
        board = self._board
        if self._addr is None or self._failures >= _RESOLVE_AFTER_FAILURES:
            # getaddrinfo has no timeout: feed first, and cache the answer so that a reconnect
            # (every outage) does not pay for it again.
            board.feed()
            self._addr = board.resolve(self.host, self.port)
            self._failures = 0
        board.feed()
        deadline = board.ticks_add(board.ticks_ms(), timeout_ms)
        self._failures += 1  # until a CONNACK says this address works
        sock = board.connect_tcp(self._addr, timeout_ms)
        if self._tls:
            try:
                sock = tlsctx.wrap(board.tls_module(), sock, self.host, self._tls_verify, self._ca_file)
            except (OSError, ValueError):
                sock.close()
                raise
        board.feed()  # the TCP connect (and a TLS handshake) took up to timeout_ms
        sock.setblocking(False)  # from here every call reports what it moved (module docstring)
        self._sock = sock
        self._poller = board.poller(sock)
        # CONNECT is built once per connection: allocating here is off the hot path.
        body = bytearray()
        _encode_str(body, "MQTT")
        flags = 0x02  # clean session: the board keeps its own outbox, the broker need not
        if self._will_topic:
            flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        if self._user:
            flags |= 0x80
            if self._password:
                flags |= 0x40
        body.append(4)
        body.append(flags)
        body.append(self.keepalive_s >> 8)
        body.append(self.keepalive_s & 0xFF)
        _encode_str(body, self.client_id)
        if self._will_topic:
            _encode_str(body, self._will_topic)
            _encode_str(body, self._will_payload)
        if self._user:
            _encode_str(body, self._user)
            if self._password:
                _encode_str(body, self._password)
        head = bytearray(5)
        head[0] = _CONNECT
        n = _put_len(head, 1, len(body))
        self._write(head, n, deadline)
        self._write(body, len(body), deadline)
        while True:
            remaining = board.ticks_diff(deadline, board.ticks_ms())
            if remaining <= 0:
                self.close()
                raise MQTTError("timeout", "no CONNACK from %s:%d" % (self.host, self.port))
            kind = self._read_packet(remaining)
            if not kind:
                continue
            if kind != _CONNACK or self._rx_len != 2:
                self.close()
                raise MQTTError("protocol", "expected CONNACK, got packet type 0x%02x" % kind)
            if self._rx[1]:
                self.close()
                reason = _CONNACK_REASONS.get(self._rx[1], "code %d" % self._rx[1])
                raise MQTTError("connect_refused", reason)
            self._ping_pending = False
            self._failures = 0
            return

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._poller = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass  # the socket is being discarded either way

    def disconnect(self) -> None:
        """Clean disconnect: the broker then does not publish the will."""
        if self._sock is not None:
            self._small[0] = _DISCONNECT
            self._small[1] = 0
            try:
                deadline = self._board.ticks_add(self._board.ticks_ms(), _PACKET_MS)
                self._write(self._small, 2, deadline)
            except MQTTError:
                pass  # already gone; close below is all that is left to do
        self.close()

    # --- bytes on the wire ------------------------------------------------------------------
    def _write(self, buf: bytes | bytearray | memoryview, n: int, deadline: int) -> None:
        """Write buf[:n] (looping over short writes) before deadline, else MQTTError. The port's
        stream write takes (buf, off, max_len): the rest of a short write goes without a slice.
        Non-blocking: None or a short count means the send buffer is full; an OSError is the end."""
        board = self._board
        sock = self._sock
        if sock is None:
            raise MQTTError("closed", "not connected")
        off = 0
        while off < n:
            try:
                sent = sock.write(buf, off, n - off)
            except OSError as exc:
                self.close()
                raise MQTTError("closed", "write failed: errno %d" % _errno(exc))
            board.feed()  # progress or not: a peer taking a byte a second must not starve it
            if sent:
                off += sent
            elif off < n:
                board.sleep_ms(_WRITE_WAIT_MS)
            if off < n and board.ticks_diff(deadline, board.ticks_ms()) <= 0:
                self.close()
                raise MQTTError("timeout", "write stalled with %d of %d bytes sent" % (off, n))
        self._last_tx = board.ticks_ms()

    def _readable(self, wait_ms: int) -> bool:
        """Poll until readable or wait_ms passed, feeding the watchdog in slices. After a slice in
        which nothing came, ask isconnected(): when the access point goes, lwIP's socket says
        nothing (reads wait, writes fill the send buffer), so a wait for a PUBACK would otherwise
        last its (retries + 1) timeouts. Only after an empty slice: the hot path never asks."""
        board = self._board
        poller = self._poller
        if poller is None:
            raise MQTTError("closed", "not connected")
        deadline = board.ticks_add(board.ticks_ms(), wait_ms)
        while True:
            left = board.ticks_diff(deadline, board.ticks_ms())
            if poller.readable(max(0, min(left, _SLICE_MS))):  # type: ignore[attr-defined]
                return True
            if not board.wifi_up():
                self.close()
                raise MQTTError(WIFI_LOST, "the access point is gone")
            if left <= _SLICE_MS:
                return False
            board.feed()

    def _read_into(self, buf: memoryview, n: int, deadline: int) -> None:
        """Fill buf[:n] before deadline, else MQTTError. readinto(buf, n) has no offset: only the
        rest of a short read needs a slice (an allocation), the usual whole read none."""
        board = self._board
        got = 0
        while got < n:
            left = board.ticks_diff(deadline, board.ticks_ms())
            if left <= 0:
                self.close()
                raise MQTTError("timeout", "packet incomplete after %d of %d bytes" % (got, n))
            if not self._readable(left):
                continue
            board.feed()  # readable again and again with nothing to read (TLS) must not starve it
            sock = self._sock
            if sock is None:
                raise MQTTError("closed", "not connected")
            try:
                k = sock.readinto(buf, n) if not got else sock.readinto(buf[got:], n - got)
            except OSError as exc:
                self.close()
                raise MQTTError("closed", "read failed: errno %d" % _errno(exc))
            if k is None:
                continue  # readable, yet nothing decrypted: a TLS record not complete yet
            if k == 0:
                self.close()
                raise MQTTError("closed", "broker closed the connection")
            got += k

    def _read_packet(self, wait_ms: int) -> int:
        """One packet if one starts within wait_ms: its type (body in self._rx[:self._rx_len]), else 0."""
        if self._sock is None:
            raise MQTTError("closed", "not connected")
        if not self._readable(wait_ms):
            return 0
        board = self._board
        deadline = board.ticks_add(board.ticks_ms(), _PACKET_MS)
        hdr = self._hdrv
        self._read_into(hdr, 1, deadline)
        first = self._hdr[0]
        length, shift = 0, 0
        while True:
            self._read_into(hdr, 1, deadline)
            byte = self._hdr[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 21:
                self.close()
                raise MQTTError("protocol", "bad remaining length")
        kind = first & 0xF0
        if length > MAX_PACKET_IN:
            # Read it through in buffer-sized pieces and forget it: the stream stays in sync.
            while length:
                chunk = min(length, MAX_PACKET_IN)
                self._read_into(self._rxv, chunk, deadline)
                length -= chunk
            self.oversized += 1
            self._rx_len = 0
            return 0
        if length:
            self._read_into(self._rxv, length, deadline)
        self._rx_len = length
        rx = self._rx
        if kind == _PUBACK and length == 2:
            self._acked = (rx[0] << 8) | rx[1]
        elif kind == _PINGRESP:
            self._ping_pending = False
        elif kind == _SUBACK and length >= 3:
            self._suback = rx[2]
        elif kind == _PUBLISH:
            self._incoming(first, length)
        return kind

    def _incoming(self, first: int, length: int) -> None:
        rx = self._rx
        if length < 2:
            return
        tlen = (rx[0] << 8) | rx[1]
        at = 2 + tlen
        qos = (first >> 1) & 3
        pid = 0
        if qos:
            pid = (rx[at] << 8) | rx[at + 1]
            at += 2
        if at > length:
            return  # malformed; nothing sensible to acknowledge
        if self._on_message is not None:
            self._on_message(self._rxv[2 : 2 + tlen], self._rxv[at:length])
        if qos == 1:
            small = self._small
            small[0] = _PUBACK
            small[1] = 2
            small[2] = pid >> 8
            small[3] = pid & 0xFF
            self._write(small, 4, self._board.ticks_add(self._board.ticks_ms(), _PACKET_MS))

    # --- operations -------------------------------------------------------------------------
    def subscribe(self, topic: bytes, timeout_ms: int, qos: int = 0) -> bool:
        """Subscribe at QoS 0 or 1; True once the broker granted it, False if it refused (ACL)."""
        board = self._board
        self._pid = self._pid % 65535 + 1
        pid = self._pid
        body = bytearray()
        body.append(pid >> 8)
        body.append(pid & 0xFF)
        _encode_str(body, topic)
        body.append(qos)
        head = bytearray(5)
        head[0] = _SUBSCRIBE
        n = _put_len(head, 1, len(body))
        deadline = board.ticks_add(board.ticks_ms(), timeout_ms)
        self._suback = -1
        self._write(head, n, deadline)
        self._write(body, len(body), deadline)
        while self._suback < 0:
            remaining = board.ticks_diff(deadline, board.ticks_ms())
            if remaining <= 0:
                self.close()
                raise MQTTError("timeout", "no SUBACK for " + topic.decode())
            self._read_packet(remaining)
        return self._suback != 0x80

    def publish(self, topic: bytes, payload: bytes | bytearray | memoryview, qos: int, retain: bool,
                timeout_ms: int = 5000, retries: int = 3) -> None:
        """Publish; for QoS 1 return only once the broker acknowledged (PUBACK), else MQTTError."""
        board = self._board
        tx = self._tx
        tlen = len(topic)
        plen = len(payload)
        length = 2 + tlen + (2 if qos else 0) + plen
        tx[0] = _PUBLISH | (qos << 1) | (1 if retain else 0)
        at = _put_len(tx, 1, length)
        tx[at] = tlen >> 8
        tx[at + 1] = tlen & 0xFF
        at += 2
        if at + tlen + 2 > _TX_SIZE:
            raise MQTTError("protocol", "topic of %d bytes does not fit the packet buffer" % tlen)
        tx[at : at + tlen] = topic
        at += tlen
        if qos:
            self._pid = self._pid % 65535 + 1
            tx[at] = self._pid >> 8
            tx[at + 1] = self._pid & 0xFF
            at += 2
        # One write for the whole packet when it fits the buffer (the usual case), else two.
        inline = at + plen <= _TX_SIZE
        if inline:
            tx[at : at + plen] = payload
        pid = self._pid
        attempts = retries + 1 if qos else 1
        attempt = 0
        while attempt < attempts:  # not `for ... in range()`: a range object per publish
            if attempt:
                tx[0] |= 0x08  # DUP: the broker may have it already
            attempt += 1
            deadline = board.ticks_add(board.ticks_ms(), timeout_ms)
            if inline:
                self._write(tx, at + plen, deadline)
            else:
                self._write(tx, at, deadline)
                self._write(payload, plen, deadline)
            if not qos:
                return
            while self._acked != pid:
                remaining = board.ticks_diff(deadline, board.ticks_ms())
                if remaining <= 0:
                    break
                self._read_packet(remaining)
            if self._acked == pid:
                return
        self.close()
        raise MQTTError("timeout", "no PUBACK for packet %d after %d attempts" % (pid, retries + 1))

    def service(self, wait_ms: int = 0) -> int:
        """Keep the session alive: read what arrived, ping when idle, fail on a missing PINGRESP.
        Returns the type of the packet read (0: none came within wait_ms)."""
        if self._sock is None:
            return 0
        kind = self._read_packet(wait_ms)
        board = self._board
        now = board.ticks_ms()
        if self._ping_pending:
            if board.ticks_diff(now, self._ping_sent) > self.keepalive_s * 500:
                self.close()
                raise MQTTError("timeout", "no PINGRESP within %d s" % (self.keepalive_s // 2))
        elif board.ticks_diff(now, self._last_tx) >= self.keepalive_s * 500:
            self._small[0] = _PINGREQ
            self._small[1] = 0
            self._write(self._small, 2, board.ticks_add(now, _PACKET_MS))
            self._ping_sent = now
            self._ping_pending = True
        return kind

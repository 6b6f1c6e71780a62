"""A small MQTT 3.1.1 client for publishing: QoS 0/1, last will, credentials, keepalive.

Every wait has a deadline: CONNACK and PUBACK waits end with MQTTError, and an unacknowledged
QoS 1 publish is retransmitted with DUP set before giving up. It never subscribes, so the only
packets it expects back are CONNACK, PUBACK and PINGRESP.
"""

from micropython import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from board_esp32 import Board, Stream

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_ETIMEDOUT = const(110)
_EAGAIN = const(11)

_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MQTTError(Exception):
    """The session is unusable; `kind` is a short code (connect_refused, timeout, closed, protocol)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind + ": " + detail)
        self.kind = kind


def _encode_str(out: bytearray, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    out.append(len(data) >> 8)
    out.append(len(data) & 0xFF)
    out.extend(data)


def _encode_len(out: bytearray, n: int) -> None:
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return


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
        self._sock: Stream | None = None
        self._pid = 0
        self._acked = -1
        self._last_tx = 0
        self._ping_sent = 0
        self._ping_pending = False
        self._hdr = bytearray(1)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout_ms: int) -> None:
        self.close()
        sock = self._board.connect_tcp(
            self.host, self.port, timeout_ms, self._tls, self._tls_verify, self._ca_file
        )
        self._sock = sock
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
        self._send(_CONNECT, body)
        deadline = self._board.ticks_add(self._board.ticks_ms(), timeout_ms)
        while True:
            remaining = self._board.ticks_diff(deadline, self._board.ticks_ms())
            if remaining <= 0:
                self.close()
                raise MQTTError("timeout", "no CONNACK from %s:%d" % (self.host, self.port))
            packet = self._read_packet(remaining)
            if packet is None:
                continue
            kind, payload = packet
            if kind != _CONNACK or len(payload) != 2:
                self.close()
                raise MQTTError("protocol", "expected CONNACK, got packet type 0x%02x" % kind)
            if payload[1]:
                self.close()
                reason = _CONNACK_REASONS.get(payload[1], "code %d" % payload[1])
                raise MQTTError("connect_refused", reason)
            self._ping_pending = False
            return

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass  # the socket is being discarded either way

    def disconnect(self) -> None:
        """Clean disconnect: the broker then does not publish the will."""
        if self._sock is not None:
            try:
                self._send(_DISCONNECT, b"")
            except MQTTError:
                pass  # already gone; close below is all that is left to do
        self.close()

    def _send(self, first: int, body: bytes | bytearray | memoryview) -> None:
        sock = self._sock
        if sock is None:
            raise MQTTError("closed", "not connected")
        head = bytearray(5)
        head[0] = first
        tmp = bytearray()
        _encode_len(tmp, len(body))
        head[1 : 1 + len(tmp)] = tmp
        try:
            sock.write(memoryview(head)[: 1 + len(tmp)])
            if len(body):
                sock.write(body)
        except OSError as exc:
            self.close()
            raise MQTTError("closed", "write failed: %s" % exc)
        self._last_tx = self._board.ticks_ms()

    def _read_exact(self, n: int, deadline: int) -> bytes:
        sock = self._sock
        if sock is None:
            raise MQTTError("closed", "not connected")
        out = b""
        while len(out) < n:
            remaining = self._board.ticks_diff(deadline, self._board.ticks_ms())
            if remaining <= 0:
                self.close()
                raise MQTTError("timeout", "packet body incomplete")
            sock.settimeout(remaining / 1000)
            try:
                chunk = sock.read(n - len(out))
            except OSError as exc:
                if exc.args and exc.args[0] in (_ETIMEDOUT, _EAGAIN):
                    continue
                self.close()
                raise MQTTError("closed", "read failed: %s" % exc)
            if chunk is None:
                continue
            if not chunk:
                self.close()
                raise MQTTError("closed", "broker closed the connection")
            out += chunk
        return out

    def _read_packet(self, wait_ms: int) -> tuple | None:
        """One packet if it starts within wait_ms; (type, body) or None."""
        sock = self._sock
        if sock is None:
            raise MQTTError("closed", "not connected")
        sock.settimeout(max(wait_ms, 1) / 1000)
        try:
            n = sock.readinto(self._hdr)
        except OSError as exc:
            if exc.args and exc.args[0] in (_ETIMEDOUT, _EAGAIN):
                return None
            self.close()
            raise MQTTError("closed", "read failed: %s" % exc)
        if n is None:
            return None
        if n == 0:
            self.close()
            raise MQTTError("closed", "broker closed the connection")
        kind = self._hdr[0] & 0xF0
        deadline = self._board.ticks_add(self._board.ticks_ms(), 2000)
        length, shift = 0, 0
        while True:
            byte = self._read_exact(1, deadline)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 21:
                self.close()
                raise MQTTError("protocol", "bad remaining length")
        body = self._read_exact(length, deadline) if length else b""
        if kind == _PUBACK and len(body) == 2:
            self._acked = (body[0] << 8) | body[1]
        elif kind == _PINGRESP:
            self._ping_pending = False
        return kind, body

    def publish(self, topic: str, payload: bytes | bytearray | memoryview, qos: int, retain: bool,
                timeout_ms: int = 5000, retries: int = 3) -> None:
        """Publish; for QoS 1 return only once the broker acknowledged (PUBACK), else MQTTError."""
        body = bytearray()
        _encode_str(body, topic)
        first = _PUBLISH | (qos << 1) | (1 if retain else 0)
        if qos:
            self._pid = self._pid % 65535 + 1
            body.append(self._pid >> 8)
            body.append(self._pid & 0xFF)
        body.extend(payload)
        self._send(first, body)
        if not qos:
            return
        pid = self._pid
        for attempt in range(retries + 1):
            if attempt:
                self._send(first | 0x08, body)  # DUP: the broker may have it already
            deadline = self._board.ticks_add(self._board.ticks_ms(), timeout_ms)
            while self._acked != pid:
                remaining = self._board.ticks_diff(deadline, self._board.ticks_ms())
                if remaining <= 0:
                    break
                self._read_packet(remaining)
            if self._acked == pid:
                return
        self.close()
        raise MQTTError("timeout", "no PUBACK for packet %d after %d attempts" % (pid, retries + 1))

    def service(self, wait_ms: int = 0) -> None:
        """Keep the session alive: read what arrived, ping when idle, fail on a missing PINGRESP."""
        if self._sock is None:
            return
        self._read_packet(wait_ms)
        now = self._board.ticks_ms()
        if self._ping_pending:
            if self._board.ticks_diff(now, self._ping_sent) > self.keepalive_s * 500:
                self.close()
                raise MQTTError("timeout", "no PINGRESP within %d s" % (self.keepalive_s // 2))
        elif self._board.ticks_diff(now, self._last_tx) >= self.keepalive_s * 500:
            self._send(_PINGREQ, b"")
            self._ping_sent = now
            self._ping_pending = True

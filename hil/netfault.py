"""A network-fault injector: a loopback TCP proxy between a board and the real MQTT broker.

It frames the MQTT packets it relays, so a test can make the broker's acknowledgements vanish
(`drop_pubacks(n)`) and see what the board does about it (`dup_publishes`: QoS 1 retransmissions
carrying the DUP flag). `cut()` takes the network away (open connections are closed, new ones are
refused until `restore()`), for a virtual board and for a real one that connects through it: the rig
listens on the bench's address (`listen_host`) and boards get the proxy as their broker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from hil.errors import BoardError

_PUBLISH = 0x30
_PUBACK = 0x40
_PINGRESP = 0xD0


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("peer closed")
        out += chunk
    return out


def _read_packet(sock: socket.socket) -> tuple[bytes, int]:
    """One MQTT packet and the length of its fixed header."""
    head = _read_exact(sock, 1)
    length_bytes = b""
    length, shift = 0, 0
    while True:
        byte = _read_exact(sock, 1)
        length_bytes += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
        if shift > 21:
            raise ConnectionError("bad remaining length")
    return head + length_bytes + _read_exact(sock, length), 1 + len(length_bytes)


class MqttProxy:
    def __init__(self, broker_host: str, broker_port: int, listen_host: str = "127.0.0.1") -> None:
        self._upstream = (broker_host, broker_port)
        self._listener = socket.create_server((listen_host, 0))
        self._cut = False
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._drop_pubacks = 0
        self.dropped_pubacks = 0
        self.dup_publishes = 0
        self.dup_topics: list[str] = []
        self.publishes = 0
        # A slow broker: each PINGRESP is held this long (real time) before the board gets it.
        self.pingresp_delay_s = 0.0
        self.pingresps = 0
        self._sockets: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="mqtt-proxy", daemon=True)

    def start(self) -> MqttProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        """The network is gone: every relayed connection closes, new ones are closed at once."""
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    @property
    def is_cut(self) -> bool:
        return self._cut

    def drop_pubacks(self, n: int) -> None:
        with self._lock:
            self._drop_pubacks += n

    def pass_pubacks(self) -> None:
        """Relay every PUBACK again (the drops `drop_pubacks` asked for and not yet done are off)."""
        with self._lock:
            self._drop_pubacks = 0

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_board: bool) -> None:
        try:
            while True:
                packet, header = _read_packet(src)
                kind = packet[0] & 0xF0
                with self._lock:
                    if from_board and kind == _PUBLISH:
                        self.publishes += 1
                        if packet[0] & 0x08:
                            self.dup_publishes += 1
                            n = (packet[header] << 8) | packet[header + 1]
                            self.dup_topics.append(packet[header + 2 : header + 2 + n].decode())
                    if not from_board and kind == _PUBACK and self._drop_pubacks:
                        self._drop_pubacks -= 1
                        self.dropped_pubacks += 1
                        continue
                    delay = self.pingresp_delay_s if not from_board and kind == _PINGRESP else 0.0
                if delay:
                    time.sleep(delay)  # the stimulus: the answer is late, not a wait for something
                if not from_board and kind == _PINGRESP:
                    self.pingresps += 1
                dst.sendall(packet)
        except (OSError, ConnectionError):
            for s in (src, dst):
                with contextlib.suppress(OSError):  # already closed by the other pump
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._listener.close()
        for s in self._sockets:
            s.close()
        self._thread.join(5)
        if self._thread.is_alive():
            raise BoardError("mqtt proxy did not stop")

    def __enter__(self) -> MqttProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class StallProxy:
    """A byte relay between a board and the broker (plain or TLS: it does not read the bytes) that
    can stall the broker's side in the middle of what it sends: `stall_next(s)` makes the next chunk
    from the broker arrive as its first bytes, then `s` seconds of silence, then the rest, as a
    congested Wi-Fi link does. `stalls` counts the stalls done."""

    def __init__(self, broker_host: str, broker_port: int) -> None:
        self._upstream = (broker_host, broker_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stall_s = 0.0
        self.stalls = 0
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="stall-proxy", daemon=True)

    def stall_next(self, seconds: float) -> None:
        with self._lock:
            self._stall_s = seconds

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_board: bool) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                with self._lock:
                    stall = self._stall_s if to_board and len(chunk) > 1 else 0.0
                    if stall:
                        self._stall_s = 0.0
                if stall:
                    cut = min(3, len(chunk) - 1)
                    dst.sendall(chunk[:cut])
                    time.sleep(stall)  # the stimulus: a link that stalls mid-packet
                    chunk = chunk[cut:]
                    with self._lock:
                        self.stalls += 1
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StallProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for s in self._sockets:
            s.close()
        self._thread.join(5)

"""The ESP32 board: the only module that touches machine, network, esp32 and the TLS module.

The virtual board (hil/virtual/vboard.py) offers the same methods on the unix port; board.py picks
one, so every other firmware module runs unchanged on both.
"""

import gc
import select
import socket
import time

import machine
import network

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Stream(Protocol):
        # The port's stream methods (py/stream.c): write(buf[, off], max_len), readinto(buf, nbytes).
        def write(self, buf: bytes | bytearray | memoryview, *args: int) -> int | None: ...
        def read(self, n: int) -> bytes | None: ...
        def readinto(self, buf: bytearray | memoryview, nbytes: int = -1) -> int | None: ...
        def close(self) -> None: ...
        def setblocking(self, flag: bool) -> None: ...

    class Watchdog(Protocol):
        def feed(self) -> None: ...


# Per-call timeout of a socket while it connects and, under TLS, shakes hands (the raw socket's:
# a TLS socket has none); the link then makes it non-blocking (mqtt.py).
IO_TIMEOUT_S = 1


class Poller:
    """select.poll over one stream; `ipoll` reuses its result tuple, so polling allocates nothing."""

    def __init__(self, stream: Stream) -> None:
        self._poll = select.poll()
        self._poll.register(stream, select.POLLIN)

    def readable(self, timeout_ms: int) -> bool:
        for _obj, _ev in self._poll.ipoll(timeout_ms):
            return True  # data, EOF or an error: the read that follows tells which
        return False


_RESET_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}

# time.time() counts from 2000-01-01 on embedded ports and from 1970 on unix.
EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0


class Board:
    name = "esp32"

    def __init__(self) -> None:
        self._wlan = network.WLAN(network.STA_IF)
        self._i2c: machine.I2C | None = None
        self._i2c_args = (0, 0, 0, 0)
        self._wdt: Watchdog | None = None
        self._nvs: object = None

    # --- time -------------------------------------------------------------------------------
    def ticks_ms(self) -> int:
        return time.ticks_ms()

    def ticks_add(self, t: int, delta: int) -> int:
        return time.ticks_add(t, delta)

    def ticks_diff(self, a: int, b: int) -> int:
        return time.ticks_diff(a, b)

    def sleep_ms(self, ms: int) -> None:
        time.sleep_ms(ms)

    def epoch_ms(self) -> int:
        return time.time_ns() // 1000000 + EPOCH_OFFSET_S * 1000

    def ntp_query(self, host: str, buf: bytearray) -> int:
        """One NTP exchange: buf[:48] out over UDP, the answer back into buf; returns its length.
        getaddrinfo has no timeout (the caller feeds the watchdog around it); the answer must come
        within 1 s (OSError ETIMEDOUT otherwise). ntp.py decides what the answer means."""
        addr = socket.getaddrinfo(host, 123)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.settimeout(1)
            s.sendto(buf, addr)
            data = s.recv(len(buf))  # one datagram (a stream readinto would wait for len(buf) bytes)
        finally:
            s.close()
        n = len(data)
        buf[:n] = data
        return n

    def set_time(self, epoch_s: int) -> None:
        tm = time.gmtime(epoch_s - EPOCH_OFFSET_S)
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))

    # --- buses ------------------------------------------------------------------------------
    def i2c(self, bus_id: int, scl: int, sda: int, freq: int) -> machine.I2C:
        if self._i2c is None:
            self._i2c_args = (bus_id, scl, sda, freq)
            self._i2c = machine.I2C(bus_id, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq)
        return self._i2c

    def i2c_pins(self) -> tuple:
        """SCL and SDA as open-drain GPIOs, released: constructing a Pin routes the pad to the GPIO
        function, away from the I2C peripheral (for a bus clear, i2cbus.py)."""
        _bus, scl, sda, _freq = self._i2c_args
        od = machine.Pin.OPEN_DRAIN
        return machine.Pin(scl, od, value=1), machine.Pin(sda, od, value=1)

    def i2c_reinit(self) -> None:
        """The peripheral back on its pads. machine.I2C(id, ...) re-initialises the port's one static
        object for that id (machine_i2c.c), the same object the drivers hold."""
        bus_id, scl, sda, freq = self._i2c_args
        self._i2c = machine.I2C(bus_id, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq)

    def sleep_us(self, us: int) -> None:
        time.sleep_us(us)

    # --- network ----------------------------------------------------------------------------
    def wifi_start(self, ssid: str, password: str) -> None:
        self._wlan.active(True)
        if not self._wlan.isconnected():
            # Non-blocking: the node polls wifi_up() and never waits here.
            try:
                self._wlan.connect(ssid, password)
            except OSError as exc:
                # Raised while an earlier attempt is still associating; the next retry asks again.
                print("wifi_connect_pending error=" + str(exc))

    def wifi_up(self) -> bool:
        return bool(self._wlan.isconnected())

    def rssi(self) -> int | None:
        try:
            return int(self._wlan.status("rssi"))
        except (OSError, ValueError):
            return None

    def resolve(self, host: str, port: int) -> tuple:
        """DNS. getaddrinfo has no timeout on the port (lwIP's own retries bound it, ~15 s): the
        caller feeds the watchdog before, caches the answer, and config validation counts it."""
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]  # type: ignore[no-any-return]

    def connect_tcp(self, addr: tuple, timeout_ms: int) -> Stream:
        """A TCP connection to addr, its per-call timeout IO_TIMEOUT_S (set on the raw socket: a TLS
        socket has none, 1.22-1.27); the link wraps it in TLS (tlsctx) and makes it non-blocking."""
        sock = socket.socket()
        sock.settimeout(timeout_ms / 1000)
        try:
            sock.connect(addr)
            sock.settimeout(IO_TIMEOUT_S)
        except OSError:
            sock.close()
            raise
        return sock  # type: ignore[return-value]

    def tls_module(self) -> object:
        """The port's TLS module: `tls` from 1.23, `ssl` on 1.22 (where `tls` does not exist)."""
        try:
            import tls as mod
        except ImportError:
            import ssl as mod  # type: ignore[no-redef]
        return mod

    def poller(self, stream: Stream) -> Poller:
        return Poller(stream)

    # --- NVS and reset cause ----------------------------------------------------------------
    def _nvs_handle(self) -> object:
        """One handle for the board's life: esp32.NVS has no close (esp32_nvs.c: nvs_open on every
        construction, never nvs_close), so a handle per call leaked ~5 per boot."""
        if self._nvs is None:
            import esp32

            self._nvs = esp32.NVS("iot")
        return self._nvs

    def nvs_get(self, key: str) -> int | None:
        try:
            return self._nvs_handle().get_i32(key)  # type: ignore[attr-defined,no-any-return]
        except OSError:
            return None  # never set (ESP_ERR_NVS_NOT_FOUND)

    def nvs_set(self, key: str, value: int) -> None:
        nvs = self._nvs_handle()
        nvs.set_i32(key, value)  # type: ignore[attr-defined]
        nvs.commit()  # type: ignore[attr-defined]

    def reset_cause(self) -> str:
        return _RESET_CAUSES.get(machine.reset_cause(), "unknown")

    # --- health and reset -------------------------------------------------------------------
    def mem_free(self) -> int:
        gc.collect()
        return gc.mem_free()

    def idf_largest(self) -> int:
        """The largest free block of the ESP-IDF heap, where mbedTLS takes its buffers (mem_free
        counts the Python heap, and from 1.22 the largest block it could grow by, too)."""
        import esp32

        return max(h[2] for h in esp32.idf_heap_info(esp32.HEAP_DATA))

    def watchdog(self, timeout_ms: int) -> Watchdog:
        self._wdt = machine.WDT(timeout=timeout_ms)  # type: ignore[assignment]
        return self._wdt  # type: ignore[return-value]

    def feed(self) -> None:
        """Feed the watchdog from inside a bounded wait (a no-op before it is started)."""
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self) -> None:
        machine.reset()

    def halt(self, message: str) -> None:
        """Stay up without doing anything, so the message stays readable on the serial console."""
        while True:
            print(message)
            time.sleep(30)

"""The virtual board layer: what board_esp32.Board offers, on the MicroPython unix port.

It supplies an I2C bus with the register-level sensor models driven by the scripted environment,
a clock (host time as NTP, or an unsynced RTC from 2000-01-01), flash as the current directory,
TCP sockets to the real broker, and a network that the test rig can cut: while the file
`<control_dir>/net_down` exists every socket operation fails as if Wi-Fi were gone. Faults come from
the spec's schedule or from `<control_dir>/fault_<sensor>` holding a fault kind.

The spec is a JSON file named by the VBOARD_SPEC environment variable.
"""

import gc
import json
import os
import socket
import sys
import time

TICKS_MAX_DELTA = 1 << 29  # time.ticks_add raises OverflowError at or beyond this (py/modtime)
NET_LOOK_MS = 10  # how soon a board sees the rig cut or restore its network
RTC_UNSYNCED_EPOCH_MS = 946684800000  # an ESP32 RTC starts at 2000-01-01 without NTP
NTP_DELTA_1970 = 2208988800  # seconds from 1900 (NTP's era 0) to 1970
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hil.virtual import bme280_model, env, vprofile, vtls
    from hil.virtual.vi2c import Pin, VirtualI2C
    from hil.virtual.vnet import (
        EHOSTUNREACH,
        ETIMEDOUT,
        IO_TIMEOUT_S,
        SLICE_REAL_MS,
        TICKS_PERIOD,
        Clock,
        Newlib,
        Poller,
        VSocket,
        exists,
        host_ms,
        newlib_error,
        read_text,
    )
else:
    # On the board these are top-level modules next to this one (MICROPYPATH).
    import bme280_model
    import env
    import vprofile
    import vtls  # loaded at boot with the rest of the layer, so the heap allowance counts it
    from vi2c import Pin, VirtualI2C
    from vnet import (
        EHOSTUNREACH,
        ETIMEDOUT,
        IO_TIMEOUT_S,
        SLICE_REAL_MS,
        TICKS_PERIOD,
        Clock,
        Newlib,
        Poller,
        VSocket,
        exists,
        host_ms,
        newlib_error,
        read_text,
    )


# The ESP32's errno values for firmware that looks them up at run time (firmware/mqtt.py): vnet raises
# newlib's numbers, and the firmware must compare them with newlib's, not the unix port's.
sys.modules["errno"] = Newlib  # type: ignore[assignment]


class Spec:
    def __init__(self, raw: "dict[str, Any]") -> None:
        self.control_dir: str = raw.get("control_dir", "")
        # The MicroPython version the board runs (hil/virtual/vprofile.py).
        self.profile: str = raw.get("profile", vprofile.DEFAULT)
        self.time_sync: bool = raw.get("time_sync", True)
        self.env = env.validate(raw["env"])
        self.faults: list[dict[str, Any]] = raw.get("faults", [])
        self.seed: int = raw.get("seed", 1)
        self.noise_lsb: int = raw.get("noise_lsb", 2)
        cal = raw.get("calibration")
        self.calibration: tuple[int, ...] = tuple(cal) if cal else bme280_model.TYPICAL
        self.rssi: int = raw.get("rssi", -61)
        self.bme280_addr: int = raw.get("bme280_addr", 0x76)
        self.bh1750_addr: int = raw.get("bh1750_addr", 0x23)
        self.parent_pid: int = raw.get("parent_pid", 0)
        self.hang_s: float = raw.get("hang_s", 3600)
        # The stuck_sda fault: SCL pulses the slave needs before it lets SDA go (vi2c.py), and
        # whether the I2C driver clears a stuck bus itself on a timeout (ESP-IDF's legacy driver
        # under the 1.22-1.24 port does).
        self.stuck_clocks: int = raw.get("stuck_clocks", 7)
        self.i2c_driver_clears_bus: bool = raw.get("i2c_driver_clears_bus", True)
        # Virtual time: `clock_speed` virtual ms per real ms; ticks start at `ticks_start_ms` (a test
        # can start a board just before the 2^30 ms wrap).
        self.clock_speed: float = raw.get("clock_speed", 1)
        self.ticks_start_ms: int = raw.get("ticks_start_ms", 0)
        # Writes return at most this many bytes per call once in `short_write_every` (0: never).
        self.short_write_every: int = raw.get("short_write_every", 3)
        self.dns_delay_ms: int = raw.get("dns_delay_ms", 0)
        self.ntp: str = raw.get("ntp", "ok")  # the NTP server's answers (Board.ntp_reply)
        # Wi-Fi association and DHCP after wlan.connect() (and again after the access point came
        # back): isconnected() stays false and sockets have no route (EHOSTUNREACH) until then.
        self.wifi_assoc_ms: int = raw.get("wifi_assoc_ms", 1000)
        # The ESP-IDF heap left for TLS (vprofile.IDF_FREE_KB unless a test squeezes it).
        self.idf_free_kb: int = raw.get("idf_free_kb", vprofile.IDF_FREE_KB)
        # NVS lives outside the flash directory: a re-flash or a wiped file system keeps it.
        default_nvs = self.control_dir.rsplit("/", 1)[0] + "/nvs.json" if self.control_dir else ""
        self.nvs_path: str = raw.get("nvs_path", default_nvs)


def load_spec() -> Spec:
    path = os.getenv("VBOARD_SPEC")
    if not path:
        raise SystemExit("VBOARD_SPEC is not set: start virtual boards with `iot boards`")
    with open(path) as f:
        return Spec(json.load(f))


class Network:
    def __init__(self, control_dir: str) -> None:
        self._flag = control_dir + "/net_down" if control_dir else ""
        self._up = True
        self._look_at = 0
        self._looked = False

    def up(self) -> bool:
        return not (self._flag and exists(self._flag))

    def seen_up(self) -> bool:
        """up() as a socket call sees it: looked at once per NET_LOOK_MS of host time. Looking
        allocates (a stat result, an OSError) and the port's socket calls allocate nothing."""
        if not self._flag:
            return True
        now = time.ticks_ms()  # type: ignore[attr-defined]
        if not self._looked or time.ticks_diff(now, self._look_at) >= NET_LOOK_MS:  # type: ignore[attr-defined]
            self._looked = True
            self._look_at = now
            self._up = self.up()
        return self._up


class Watchdog:
    """machine.WDT on its own timer: it resets the board (exit 3, the launcher restarts it) once
    `timeout_ms` of virtual run time passed without a feed, checked inside every board call,
    whether the firmware feeds or not (a hang in DNS or on the bus trips it mid-call).

    It also powers the board off when the rig that started it is gone, so a killed launcher never
    leaves orphaned boards publishing on a shared machine.
    """

    def __init__(self, board: "Board", timeout_ms: int) -> None:
        self._board = board
        self._timeout = timeout_ms
        self._last = board.clock.run_ms()
        self._rig = "/proc/" + str(board.spec.parent_pid) if board.spec.parent_pid else ""
        self._rig_checked = self._last
        self.feeds = 0
        self._shown_at = 0  # host ms the chip's copy of the deadline was last written
        self._show()

    def check(self) -> None:
        """What the hardware does on its own: reset once the timeout passed without a feed."""
        now = self._board.clock.run_ms()
        late = now - self._last
        if late > self._timeout:
            print("watchdog_reset late_ms=" + str(late) + " timeout_ms=" + str(self._timeout))
            self._board._leave_cause("watchdog")
            raise SystemExit(3)
        if self._rig and now - self._rig_checked >= 1000:
            self._rig_checked = now
            if not exists(self._rig):
                print("rig_gone action=powering_off")
                raise SystemExit(0)

    def feed(self) -> None:
        self.check()
        self._last = self._board.clock.run_ms()
        self.feeds += 1
        if host_ms() - self._shown_at >= 500:
            self._show()

    def _show(self) -> None:
        """The timer outlives the interpreter (machine_wdt.c: the registration survives Ctrl-C, the
        REPL and a soft reset): the chip around the board (hil/serial_board.py) keeps counting from
        control/wdt_deadline_ms once main.py stopped. Written at most every 500 ms of feeds."""
        control = self._board.spec.control_dir
        if not control:
            return
        self._shown_at = host_ms()
        with open(control + "/wdt_deadline_ms", "w") as f:
            f.write(str(self._shown_at + int(self._board.clock.real_s(self._timeout) * 1000)))


class Board:
    name = "virtual"

    def __init__(self, spec: Spec | None = None) -> None:
        self.spec = spec if spec is not None else load_spec()
        self.net = Network(self.spec.control_dir)
        self.clock = Clock(self.spec.clock_speed, self.spec.ticks_start_ms, self.spec.control_dir)
        self._host_at_boot = host_ms()
        self._synced = False
        self._rtc_base = RTC_UNSYNCED_EPOCH_MS  # the RTC counts from 2000-01-01 until set
        self._i2c: VirtualI2C | None = None
        self.wdt: Watchdog | None = None
        self._reset_cause = ""
        self.profile = vprofile.get(self.spec.profile)
        self.idf = vprofile.IdfHeap(self.spec.idf_free_kb * 1024)
        self._assoc_at = -1  # run ms when association began; -1 never asked, -2 lost
        flash = sys.modules.get("vfile")  # mounted by vboot.py: its erases take the board's time
        if flash is not None and flash.DEVICE is not None:
            flash.DEVICE.wait = self.block_ms

    def world_ms(self) -> int:
        """Physical time (epoch ms) in the board's world: what the sensors convert in and measure.
        Equal to host time at clock_speed 1; with a faster clock, conversions take virtual time."""
        return self._host_at_boot + self.clock.now_ms()

    def check_watchdog(self) -> None:
        if self.wdt is not None:
            self.wdt.check()

    def block_ms(self, ms: int) -> None:
        """Spend `ms` of virtual time stuck, as a hung call does (the watchdog may fire meanwhile)."""
        until = self.clock.run_ms() + ms
        while True:
            self.check_watchdog()
            left = until - self.clock.run_ms()
            if left <= 0:
                return
            time.sleep(min(SLICE_REAL_MS / 1000, self.clock.real_s(left)))

    # --- time -------------------------------------------------------------------------------
    def ticks_ms(self) -> int:
        self.check_watchdog()
        return self.clock.ticks_ms()

    def ticks_add(self, t: int, delta: int) -> int:
        if not -TICKS_MAX_DELTA <= delta < TICKS_MAX_DELTA:
            raise OverflowError("ticks interval overflow")  # as time.ticks_add on the port
        return (t + delta) % TICKS_PERIOD

    def ticks_diff(self, a: int, b: int) -> int:
        d = (a - b) % TICKS_PERIOD
        return d - TICKS_PERIOD if d >= TICKS_PERIOD // 2 else d

    def sleep_ms(self, ms: int) -> None:
        if ms > 0:
            self.block_ms(ms)

    def epoch_ms(self) -> int:
        return self._rtc_base + self.clock.now_ms()

    def ntp_reply(self) -> bytes | None:
        """What the NTP server answers on the virtual network, or None when UDP 123 is blocked (the
        query times out). `ntp` (spec, or control/ntp): ok, blocked, short (a 40-byte reply),
        zero (transmit time 0: an unsynchronised server), kiss (stratum 0, a kiss-o'-death);
        time_sync false means blocked."""
        mode = read_text(self.spec.control_dir + "/ntp") if self.spec.control_dir else ""
        mode = mode or (self.spec.ntp if self.spec.time_sync else "blocked")
        if mode == "blocked":
            return None
        reply = bytearray(48)
        reply[0] = 0x24  # LI 0, version 4, mode 4 (server)
        reply[1] = 0 if mode == "kiss" else 2
        secs = 0 if mode == "zero" else (self.world_ms() // 1000 + NTP_DELTA_1970) & 0xFFFFFFFF
        reply[40:44] = secs.to_bytes(4, "big")
        return bytes(reply[:40]) if mode == "short" else bytes(reply)

    def ntp_query(self, host: str, buf: bytearray) -> int:
        """board_esp32.ntp_query: DNS (no timeout), one UDP exchange with a 1 s timeout."""
        self.check_watchdog()
        self._route()
        if not host.replace(".", "").isdigit():
            self._dns_wait(host)  # the NTP server is virtual: its name is looked up only in time
        reply = self.ntp_reply()
        if reply is None:
            self.block_ms(1000)
            raise OSError(ETIMEDOUT)
        buf[: len(reply)] = reply
        return len(reply)

    def set_time(self, epoch_s: int) -> None:
        """machine.RTC().datetime(...): the board's clock reads epoch_s from now on."""
        self._rtc_base = epoch_s * 1000 - self.clock.now_ms()
        self._synced = True

    # --- sensors ----------------------------------------------------------------------------
    def fault(self, sensor: str, now_ms: int) -> str:
        forced = ""
        if self.spec.control_dir:
            forced = read_text(self.spec.control_dir + "/fault_" + sensor)
        if forced:
            return forced
        now_s = now_ms / 1000
        for f in self.spec.faults:
            if f.get("sensor") == sensor and f.get("start", 0) <= now_s < f.get("end", 1e18):
                kind: str = f.get("kind", "nack")
                return kind
        return ""

    def conditions(self, now_ms: int) -> tuple[float, float, float]:
        v = env.values_at(self.spec.env, now_ms / 1000)
        return v["temperature"], v["humidity"], v["pressure"] * 100

    def light(self, now_ms: int) -> float:
        lux: float = env.values_at(self.spec.env, now_ms / 1000)["luminosity"]
        return lux

    def i2c(self, bus_id: int, scl: int, sda: int, freq: int) -> VirtualI2C:
        if self._i2c is None:
            bus = VirtualI2C(self)
            bus.bme280.source = self.conditions
            bus.bh1750.source = self.light
            self._i2c = bus
        return self._i2c

    def i2c_pins(self) -> tuple[Pin, Pin]:
        """SCL and SDA as open-drain GPIOs, released (for a bus clear)."""
        bus = self._i2c
        if bus is None:
            raise OSError(19)  # no bus configured (ENODEV)
        scl, sda = Pin(bus.wires, "scl", self), Pin(bus.wires, "sda", self)
        scl.value(1)
        sda.value(1)
        return scl, sda

    def i2c_reinit(self) -> None:
        if self._i2c is not None:
            self._i2c.reinit()

    def sleep_us(self, us: int) -> None:
        self.check_watchdog()  # microseconds: nothing a test could see pass

    # --- network ----------------------------------------------------------------------------
    def wifi_start(self, ssid: str, password: str) -> None:
        """wlan.connect(): association begins; it takes `wifi_assoc_ms`. Once asked, the port's
        driver re-associates by itself when the access point comes back (network_wlan.c)."""
        if self._assoc_at == -1:
            self._assoc_at = self.clock.run_ms()

    def wifi_up(self) -> bool:
        """wlan.isconnected(): false at once when the access point goes (net_down)."""
        if not self.net.up():
            if self._assoc_at >= 0:
                self._assoc_at = -2
            return False
        if self._assoc_at == -1:
            return False
        if self._assoc_at == -2:
            self._assoc_at = self.clock.run_ms()
        return self.clock.run_ms() - self._assoc_at >= self.spec.wifi_assoc_ms

    def rssi(self) -> int | None:
        if self.spec.control_dir and exists(self.spec.control_dir + "/crash"):
            raise RuntimeError("injected fault (control/crash)")  # a bug the firmware did not expect
        return self.spec.rssi if self.net.up() else None

    # --- NVS and reset cause ----------------------------------------------------------------
    def _nvs(self) -> "dict[str, int]":
        if not self.spec.nvs_path:
            return {}
        try:
            with open(self.spec.nvs_path) as f:
                data: dict[str, int] = json.load(f)
        except (OSError, ValueError):
            return {}
        return data

    def nvs_get(self, key: str) -> int | None:
        return self._nvs().get(key)

    def nvs_set(self, key: str, value: int) -> None:
        if self.spec.control_dir and exists(self.spec.control_dir + "/nvs_fail"):
            raise OSError(-0x1105)  # ESP_ERR_NVS_NOT_ENOUGH_SPACE: the NVS partition is full
        if not self.spec.nvs_path:
            return
        data = self._nvs()
        data[key] = value
        with open(self.spec.nvs_path + ".tmp", "w") as f:
            json.dump(data, f)
        os.rename(self.spec.nvs_path + ".tmp", self.spec.nvs_path)

    def reset_cause(self) -> str:
        """What the last exit left in control/reset_cause (watchdog, hard), else power_on."""
        if not self._reset_cause:
            path = self.spec.control_dir + "/reset_cause" if self.spec.control_dir else ""
            self._reset_cause = (read_text(path) if path else "") or "power_on"
            if path and exists(path):
                os.remove(path)
        return self._reset_cause

    def _leave_cause(self, cause: str) -> None:
        if self.spec.control_dir:
            with open(self.spec.control_dir + "/reset_cause", "w") as f:
                f.write(cause)

    def _route(self) -> None:
        if not self.wifi_up():
            raise OSError(EHOSTUNREACH)  # no IP yet, or Wi-Fi gone: lwIP has no route

    def resolve(self, host: str, port: int) -> "Any":
        """DNS, which takes `dns_delay_ms` of virtual time (spec, or control/dns_delay_ms) with no
        timeout of its own, as getaddrinfo on the port: the watchdog may fire inside it."""
        self.check_watchdog()
        self._route()
        self._dns_wait(host)
        self._route()
        found: Any = socket.getaddrinfo(host, port)[0][-1]
        return found

    def _dns_wait(self, host: str) -> None:
        delay = read_text(self.spec.control_dir + "/dns_delay_ms") if self.spec.control_dir else ""
        ms = int(delay) if delay else self.spec.dns_delay_ms
        print("dns_lookup host=" + host + " delay_ms=" + str(ms))
        self.block_ms(ms)

    def connect_tcp(self, addr: "Any", timeout_ms: int) -> VSocket:
        """As board_esp32: connected within timeout_ms, then a per-call timeout of IO_TIMEOUT_S."""
        self.check_watchdog()
        self._route()
        raw = socket.socket()
        stream = VSocket(raw, self)
        # The connect waits for the broker: at host speed (Clock.hold).
        self.clock.hold(True)
        try:
            stream.raw_settimeout(timeout_ms / 1000)
            try:
                raw.connect(addr)
            except OSError as exc:
                stream.close()
                raise newlib_error(exc) from None
        finally:
            self.clock.hold(False)
        stream.raw_settimeout(IO_TIMEOUT_S)
        stream._raw.connected()
        return stream

    def tls_module(self) -> object:
        """The profile's TLS module (hil/virtual/vtls.py): 1.22's `ssl` or `tls`."""
        vtls.BOARD = self
        return vtls.Ssl if self.profile["tls_module"] == "ssl" else vtls.Tls

    def synced(self) -> bool:
        return self._synced

    def poller(self, stream: VSocket) -> Poller:
        return Poller(self, stream)

    def feed(self) -> None:
        if self.wdt is not None:
            self.wdt.feed()

    # --- health and reset -------------------------------------------------------------------
    def mem_free(self) -> int:
        gc.collect()
        free: int = gc.mem_free()  # type: ignore[attr-defined]
        return free

    def idf_largest(self) -> int:
        """esp32.idf_heap_info(esp32.HEAP_DATA)'s largest free block (vprofile.IdfHeap)."""
        return self.idf.info()[0][2]

    def watchdog(self, timeout_ms: int) -> Watchdog:
        self.wdt = Watchdog(self, timeout_ms)
        return self.wdt

    def reset(self) -> None:
        self._leave_cause("hard")  # machine.reset()
        raise SystemExit(4)

    def halt(self, message: str) -> None:
        print(message)
        raise SystemExit(2)

"""The sensor node: measure every interval into the outbox, drain it in order while the link is up.

A reading stays in the outbox until the gateway says Kafka holds it (end-to-end ack on
`sensors/{place}/{device}/ack`; with `e2e_ack` off, the broker's PUBACK). It is kept in RAM while
it can be delivered and written to flash only when it cannot (see outbox.py): an outage or a
reboot delays readings but does not lose them. Only a full outbox loses data, oldest first, and
counts it.
"""

import gc
import json
import os
import random
import sys

# Largest modules first, a collection after each: compiling from source on a ~110 KB heap needs
# contiguous blocks that later imports would have fragmented (measured: importing in alphabetical
# order fails at 110 KB, this order leaves ~55 KB free).
from link import Link, backoff_delay_ms

gc.collect()
from mqtt import MQTTError  # noqa: E402
from outbox import Outbox  # noqa: E402

gc.collect()
import config  # noqa: E402
import log  # noqa: E402
from bh1750 import BH1750  # noqa: E402
from bme280 import BME280  # noqa: E402
import i2cbus  # noqa: E402
import ntp  # noqa: E402
from sensor import SensorError  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from board_esp32 import Board
    from fleet import Fleet
    from remote_config import Remote

BOOT_FILE = "bootcount"
CRASH_FILE = "crash.txt"
CRASH_TAIL = 300  # characters of traceback kept: the exception and the innermost frames
SAFE_MODE_AFTER = 3  # crashes in a row (without 10 minutes of healthy running between them)
HEALTHY_AFTER_MS = 600000
SAFE_MODE_WIFI_MS = 30000  # how long safe mode waits for Wi-Fi before giving up on reporting
REPL_WATCHDOG_MS = 3600000  # config.py's longest watchdog_s
_RANGES = {
    "temperature": (-40.0, 85.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1100.0),
    "luminosity": (0.0, 150000.0),
}


def _file_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _write_file(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)  # atomic on littlefs: the old or the new value, never half


def next_boot(board: Board | None = None) -> int:
    """This boot's number (first boot is 0): one more than the highest of the counter in NVS and
    the file. NVS is its own flash partition, so a re-flash or a new file system keeps it and new
    readings never repeat the (boot, seq) of readings already sent; the file covers boards (or
    tests) without NVS. NVS is written first: a power cut between the two leaves NVS ahead."""
    known = [b for b in (_file_int(BOOT_FILE), board.nvs_get("boot") if board is not None else None)
             if b is not None]
    boot = max(known) + 1 if known else 0
    if board is not None:
        board.nvs_set("boot", boot)
    _write_file(BOOT_FILE, str(boot))
    return boot


def record_crash(board: Board, exc: BaseException) -> None:
    """Keep the reason and the end of the traceback for the next boot's health, count the crash."""
    import io

    buf = io.StringIO()
    sys.print_exception(exc, buf)  # type: ignore[attr-defined]
    text = buf.getvalue()
    try:
        _write_file(CRASH_FILE, text[-CRASH_TAIL:])
    except OSError as err:
        print("crash_record_failed error=" + str(err))
    board.nvs_set("crashes", (board.nvs_get("crashes") or 0) + 1)
    print(text)


def take_crash() -> str:
    """The last crash's record (once: it is removed), or ""."""
    try:
        with open(CRASH_FILE) as f:
            text = f.read()
        os.remove(CRASH_FILE)
    except OSError:
        return ""
    return text


class Sensor:
    """A driver plus its health: failed sensors give None and count errors; the node keeps going."""

    def __init__(self, name: str, driver: BME280 | BH1750) -> None:
        self.name = name
        self.driver = driver
        self.started = False
        self.errors = 0
        self.last_error = ""
        # The last read failed on the bus other than by a NACK: a slave may be holding SDA low.
        self.bus_suspect = False

    def fail(self, exc: SensorError) -> None:
        self.errors += 1
        self.bus_suspect = exc.kind == "i2c" and exc.code != i2cbus.ENODEV
        if exc.kind != self.last_error:
            log.event("sensor_failed", sensor=self.name, kind=exc.kind, detail=exc.detail,
                      action="metrics are null until it recovers; check wiring if it persists")
        self.last_error = exc.kind
        if exc.kind != "stuck":
            self.started = False  # re-check chip id and calibration before trusting it again

    def ok(self) -> None:
        if self.last_error:
            log.event("sensor_recovered", sensor=self.name, after=self.last_error)
            self.last_error = ""

    def read(self) -> float | tuple | None:
        try:
            if not self.started:
                self.driver.start()
                self.started = True
                if getattr(self.driver, "crc_warning", False):
                    log.event("sensor_warning", sensor=self.name, kind="calibration_crc",
                              action="readings continue with the stored calibration (a clone part?)")
            value = self.driver.read()
        except SensorError as exc:
            self.fail(exc)
            return None
        self.ok()
        return value


class Node:
    def __init__(self, board: Board, cfg: dict, remote: Remote | None = None) -> None:
        self.board = board
        self.cfg = cfg
        self.boot = next_boot(board)
        self.reset_cause = board.reset_cause()
        self.last_crash = take_crash()
        self.crashes = board.nvs_get("crashes") or 0
        self.seq = 0
        self.fw = config.FW_VERSION  # config.py itself leaves the heap once the node is made (main)
        host, port, tls = config.parse_broker(cfg["broker"])
        i2c = board.i2c(cfg["i2c_id"], cfg["i2c_scl"], cfg["i2c_sda"], cfg["i2c_freq"])
        self.bme = Sensor("bme280", BME280(i2c, cfg["bme280_addr"], board, cfg["stuck_after"]))
        self.bh = Sensor("bh1750", BH1750(i2c, cfg["bh1750_addr"], board, cfg["bh1750_mtreg"]))
        self.range_errors = 0
        self.bus_clears = 0
        self.outbox = Outbox(cfg["outbox_slots"], feed=board.feed)
        if self.outbox.torn:
            log.event("outbox_torn_records", torn=self.outbox.torn, kept=self.outbox.flash_count,
                      action="skipped: a power cut interrupted a flash write")
        self.e2e_ack = cfg["e2e_ack"]
        self.set_ack_timeout(cfg)
        self.acks = 0
        self.link = Link(board, cfg, host, port, tls, self.on_ack if self.e2e_ack else None, self.on_fleet)
        # Remote configuration and updates (fleet.py) load only when in use: the heap at boot is an
        # ESP32's, and most boots have neither.
        self.fleet: Fleet | None = None
        self._remote = remote  # handed to fleet.py at the start of run()
        self.time_valid = False
        # Uptime as an unbounded int, summed from tick differences each pass (a pass is far shorter
        # than 2^29 ms): ticks wrap at 2^30 ms (12.4 days) and a difference of ticks is only valid
        # within half of that, so neither uptime nor schedules longer than 6.2 days may use ticks.
        self._last_ticks = board.ticks_ms()
        self.uptime_ms = 0
        self.interval_ms = max(1, int(cfg["interval_s"] * 1000))
        self._next_ntp = 0  # in uptime ms, not ticks: ntp_every_s may be a week (> 2^29 ms)
        self._ntp_buf = bytearray(ntp.LEN)
        self.next_health = 0
        self.skipped = 0
        self._wdt_ms = int(cfg["watchdog_s"] * 1000)

    def set_ack_timeout(self, cfg: dict) -> None:
        """ack_timeout_s and its cap, at boot and from a remote config: the re-send wait starts over."""
        self.ack_timeout_ms = int(cfg["ack_timeout_s"] * 1000)
        self.ack_timeout_max_ms = int(cfg["ack_timeout_max_s"] * 1000)
        self.ack_wait_ms = self.ack_timeout_ms  # how long the oldest unacked reading may wait now
        self.ack_timeouts = 0  # ack timeouts in a row, with no ack between them

    # --- measuring --------------------------------------------------------------------------
    def _metric(self, name: str, value: float | None) -> float | None:
        if value is None:
            return None
        value += self.cfg["offsets"].get(name, 0)
        low, high = _RANGES[name]
        if not low <= value <= high:
            self.range_errors += 1
            log.event("metric_out_of_range", metric=name, value=value, action="reported as null")
            return None
        return round(value, 2)

    def measure(self) -> bytes:
        ts = self.board.epoch_ms()
        t = h = p = lux = None
        thp = self.bme.read()
        if isinstance(thp, tuple):
            t, h, p = thp
        light = self.bh.read()
        if isinstance(light, float):
            lux = light
        if self.bme.bus_suspect or self.bh.bus_suspect:
            self.bus_clears += i2cbus.recover(self.board, self.bme, self.bh, self.bus_clears)
        reading = {
            "v": 1,
            "device": self.cfg["device"],
            "place": self.cfg["place"],
            "boot": self.boot,
            "seq": self.seq,
            "ts": ts,
            "time_valid": self.time_valid,
            "temperature": self._metric("temperature", t),
            "humidity": self._metric("humidity", h),
            "pressure": self._metric("pressure", p),
            "luminosity": self._metric("luminosity", lux),
            "fw": self.fw,
        }
        self.seq += 1
        return json.dumps(reading).encode()

    def enqueue(self, payload: bytes) -> None:
        dropped = self.outbox.dropped
        # Not deliverable now (link down): straight to flash, so a power cut does not lose it.
        self.outbox.push(self.boot, self.seq - 1, payload, not self.link.up)
        if self.outbox.dropped != dropped:
            log.event("outbox_full_dropped_oldest", dropped=self.outbox.dropped,
                      capacity=self.outbox.max_records)

    def on_ack(self, topic: memoryview, payload: memoryview) -> None:
        """An end-to-end ack from the gateway: release the readings Kafka holds."""
        try:
            ack = json.loads(bytes(payload))
            released = self.outbox.ack(int(ack["boot"]), ack["ranges"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.event("ack_invalid", error=exc, action="ignored; unacked readings are re-sent")
            return
        self.acks += released
        if self.ack_timeouts:
            log.event("ack_backoff_reset", timeouts=self.ack_timeouts, wait_ms=self.ack_timeout_ms,
                      action="the gateway acks again: re-sends wait ack_timeout_s again")
            self.ack_timeouts = 0
            self.ack_wait_ms = self.ack_timeout_ms

    # --- sending ----------------------------------------------------------------------------
    def drain(self, until_ms: int) -> None:
        """Publish queued readings oldest first until all are in flight, the link drops, or until_ms."""
        board = self.board
        box = self.outbox
        if not self.link.up:
            if box.ram_count:
                box.spill()  # could not be delivered: keep them through a power cut
            return
        if self.e2e_ack:
            oldest = box.oldest_unacked_ms()
            if oldest is not None and board.ticks_diff(board.ticks_ms(), oldest) > self.ack_wait_ms:
                # Each timeout in a row doubles the next wait, up to ack_timeout_max_s, half of it
                # random (link.backoff_delay_ms): acks that come late because the pipeline is slow
                # must not make the fleet send more (the 3,000-board soak re-sent 9x what it
                # measured), and boards that timed out together do not re-send together. Never
                # shorter than ack_timeout_s; an ack starts over (on_ack).
                self.ack_timeouts += 1
                self.ack_wait_ms = max(self.ack_timeout_ms, backoff_delay_ms(
                    self.ack_timeouts, self.ack_timeout_ms, self.ack_timeout_max_ms, random.getrandbits(16)))
                log.event("ack_timeout", in_flight=box.in_flight, queued=box.count,
                          timeouts=self.ack_timeouts, next_wait_ms=self.ack_wait_ms,
                          action="kept in flash and re-sent, again after next_wait_ms without an ack;"
                          " is the gateway running?")
                box.spill()
                box.rewind()  # the one re-send that is not a reconnect's: a spill sends nothing again
        sent = 0
        # At least one entry per cycle even when running late, so a backlog always shrinks.
        while self.link.up:
            if sent and board.ticks_diff(until_ms, board.ticks_ms()) <= 0:
                return
            entry = box.next_entry()
            if entry is None:
                return
            if not self.link.publish_reading(entry):
                box.spill()  # the link is down (Link._lost): the reconnect re-sends what is in flight
                return
            box.sent(board.ticks_ms())
            if not self.e2e_ack:
                box.delivered()
                self.acks += 1  # PUBACKed is delivered without e2e acks (an update's trial counts it)
            sent += 1

    def health(self) -> bytes:
        h = {
            "device": self.cfg["device"],
            "place": self.cfg["place"],
            "boot": self.boot,
            "fw": self.fw,
            "uptime_s": self.uptime_ms // 1000,
            "rssi": self.board.rssi(),
            "mem_free": self.board.mem_free(),
            "idf_largest": self.board.idf_largest(),
            "outbox_depth": self.outbox.count,
            "outbox_dropped": self.outbox.dropped,
            "outbox_flash": self.outbox.flash_count,
            "outbox_torn": self.outbox.torn,
            "sensor_errors": {
                "bme280": self.bme.errors,
                "bh1750": self.bh.errors,
                "range": self.range_errors,
                "i2c_bus": self.bus_clears,  # bus clears the firmware ran (a slave held SDA low)
            },
            "sensor_warnings": {"bme280_crc": self.bme.driver.crc_warning},  # type: ignore[union-attr]
            "reconnects": self.link.reconnects,
            "oversized_in": self.link.client.oversized,
            "time_valid": self.time_valid,
            "skipped_cycles": self.skipped,
            "reset_cause": self.reset_cause,
            "last_crash": self.last_crash,
            "crashes": self.crashes,
        }
        if self.fleet is not None:
            self.fleet.fields(h)  # config_rev, update_state, ...: absent on a board that never had any
        return json.dumps(h).encode()

    # --- remote configuration and updates (fleet.py) --------------------------------------------
    def on_fleet(self, kind: bytes, payload: memoryview | None) -> None:
        try:
            if self.fleet is None:
                gc.collect()
                from fleet import Fleet

                self.fleet = Fleet(self, self._remote)
                self._remote = None  # the fleet's from here (it may let it go for ota.py's heap)
            if payload is not None:
                self.fleet.message(kind, payload)
        except MemoryError:  # a retained message would crash every boot: dropped, said
            log.event("fleet_message_dropped", topic=kind.decode(), why="no heap")

    def _sync_clock(self, now: int) -> None:
        if self.uptime_ms < self._next_ntp or not self.board.wifi_up():
            return
        board = self.board
        buf = self._ntp_buf
        ntp.request(buf)
        board.feed()  # the query resolves the host (no timeout) and waits up to 1 s for the answer
        ok = False
        try:
            board.set_time(ntp.parse(buf, board.ntp_query(self.cfg["ntp_host"], buf)))
            ok = True
        except (OSError, ValueError) as exc:
            # UDP 123 blocked or a bad answer: readings stay time_valid false, verified TLS waits.
            log.event("ntp_refused", host=self.cfg["ntp_host"], error=exc,
                      action="retrying in 60 s; readings are stamped by the gateway meanwhile")
        board.feed()
        retry_s = self.cfg["ntp_every_s"] if ok else 60
        self._next_ntp = self.uptime_ms + retry_s * 1000
        if ok and not self.time_valid:
            log.event("clock_synced", host=self.cfg["ntp_host"])
        self.time_valid = self.time_valid or ok
        self.link.clock_ok = self.link.clock_ok or ok

    # --- main loop --------------------------------------------------------------------------
    def run(self) -> None:
        board = self.board
        # A remote config, an update under way or its outcome: fleet.py loads now, not in __init__,
        # so that main() holds no reference to the remote config any more and fleet.py can let it go
        # (with config.py) when ota.py needs the heap: a transfer resumed at boot on a board with a
        # remote config found no heap to load ota.py while main() held it.
        if self._remote or _exists("ota.d/state") or _exists("ota.d/offer") or _exists("ota.d/result"):
            self.on_fleet(b"", None)
        log.event("node_boot", device=self.cfg["device"], place=self.cfg["place"], boot=self.boot,
                  fw=self.fw, board=board.name, outbox_depth=self.outbox.count,
                  mem_free=board.mem_free())
        wdt = board.watchdog(self._wdt_ms)
        next_measure = board.ticks_ms()
        try:
            while True:
                wdt.feed()
                now = board.ticks_ms()
                self.uptime_ms += board.ticks_diff(now, self._last_ticks)
                self._last_ticks = now
                if self.crashes and self.uptime_ms >= HEALTHY_AFTER_MS:
                    self.crashes = 0  # running well: the crash loop, if any, is over
                    board.nvs_set("crashes", 0)
                self._sync_clock(now)
                self.link.check_wifi()  # before enqueue decides between RAM and flash
                if board.ticks_diff(now, next_measure) >= 0:
                    self.enqueue(self.measure())
                    wdt.feed()  # the cycle and its outbox write are one stretch (config.unfed_waits)
                    next_measure = board.ticks_add(next_measure, self.interval_ms)
                    behind = board.ticks_diff(board.ticks_ms(), next_measure)
                    if behind > self.interval_ms:
                        # Blocked longer than a cycle (e.g. a slow connect): skip, don't burst.
                        self.skipped += behind // self.interval_ms
                        next_measure = board.ticks_add(board.ticks_ms(), self.interval_ms)
                    gc.collect()
                if self.link.just_connected:
                    self.outbox.rewind()  # re-send what was in flight when the link broke
                if self.link.up and (self.link.just_connected or self.uptime_ms >= self.next_health):
                    self.link.just_connected = False
                    self.link.publish_health(self.health())
                    self.next_health = self.uptime_ms + int(self.cfg["health_every_s"] * 1000)
                # Bounded by the watchdog too: a long interval must not starve it while draining.
                budget = min(max(0, board.ticks_diff(next_measure, board.ticks_ms())), self._wdt_ms // 4)
                self.drain(board.ticks_add(board.ticks_ms(), budget))
                wait = board.ticks_diff(next_measure, board.ticks_ms())
                self.link.service(max(0, min(wait, 1000)))
                if self.fleet is not None:
                    self.fleet.step()
        except KeyboardInterrupt:
            # Stopped for the REPL (Ctrl-C, `iot flash`): the watchdog cannot be stopped and keeps
            # running there (machine_wdt.c), so leave it the longest timeout the config allows.
            board.watchdog(REPL_WATCHDOG_MS)
            self.outbox.spill()  # what RAM holds survives a clean stop (a re-flash, a power-off)
            log.event("node_stopping", reason="interrupt", boot=self.boot, next_seq=self.seq,
                      outbox_depth=self.outbox.count)
            self.link.close()


def main() -> None:
    from board import load

    board = load()
    try:
        node = _start(board)
        if node is not None:
            node.run()
    except Exception as exc:  # the crash handler: anything the node did not expect
        log.event("node_crashed", error=exc, action="recorded for the next boot's health; rebooting")
        try:
            record_crash(board, exc)
        except Exception as err:  # NVS full, no heap left: the reset matters more than the record
            print("crash_record_failed error=" + str(err))
        finally:
            board.reset()


def _start(board: Board) -> Node | None:
    """The config (config.json, with the operator's remote config over it) and the node, or None
    (halted on a bad config, or safe mode). A function of its own: what it held (config.py, a remote
    config) is no longer referenced once it returns, even from a stack slot the garbage collector
    scans, so fleet.py can give their heap to an update (main() runs as long as the node)."""
    global config
    try:
        cfg = config.load()
    except config.ConfigError as exc:
        log.event("config_invalid", field=exc.field, problem=exc.problem,
                  action="fix config.json and copy it again with `iot flash --config FILE`")
        board.halt(str(exc))
        return None
    remote = None
    if _exists("remote.json") or _exists("remote.try"):
        from remote_config import Remote

        remote = Remote()
        cfg = remote.boot(cfg)  # the operator's config over config.json (or on trial)
    gc.collect()
    crashes = board.nvs_get("crashes") or 0
    if crashes >= SAFE_MODE_AFTER:
        safe_mode(board, cfg, crashes)
        return None
    node = Node(board, cfg, remote)
    # config.py checks a config (~11.5 KB of heap loaded as .mpy, measured on the unix port); nothing
    # needs it again until a remote config comes (remote_config.py loads it then), and its heap is
    # what an update needs: ota.py and the signature check did not fit beside it.
    del config
    sys.modules.pop("config", None)
    return node


def safe_mode(board: Board, cfg: dict, crashes: int) -> None:
    """After SAFE_MODE_AFTER crashes in a row: do not start the node (it would crash again); say
    so on the status topic with the crash in health, then end main.py so the REPL stays free for
    a re-flash. The counter is cleared: the next reset runs the firmware again."""
    board.nvs_set("crashes", 0)
    crash = take_crash()
    log.event("safe_mode", crashes=crashes, last_crash=crash[-120:],
              action="firmware not started; re-flash it with `iot flash`, then reset the board")
    host, port, tls = config.parse_broker(cfg["broker"])
    link = Link(board, cfg, host, port, tls)
    link.clock_ok = True
    board.wifi_start(cfg["wifi_ssid"], cfg["wifi_password"])
    # wlan.connect() returns at once and there is no route until the board has an IP: wait for it.
    waited = 0
    while not board.wifi_up() and waited < SAFE_MODE_WIFI_MS:
        board.sleep_ms(200)
        waited += 200
    try:
        link.client.connect(5000)
        link.client.publish(link.status_topic, b"safe_mode", 1, True)
        health = {"device": cfg["device"], "place": cfg["place"], "fw": config.FW_VERSION,
                  "safe_mode": True, "crashes": crashes, "last_crash": crash,
                  "reset_cause": board.reset_cause()}
        link.client.publish(link.health_topic, json.dumps(health).encode(), 0, True)
        link.client.disconnect()
    except (MQTTError, OSError, ValueError) as exc:
        log.event("safe_mode_unreported", error=exc, action="check the serial console")

"""The virtual board's I2C bus: two open-drain wires, the sensor models on them, and the ESP32
port's hardware I2C (`machine.I2C`) as the master.

What the part does, read from MicroPython 1.22-1.24 `ports/esp32/machine_i2c.c` and the ESP-IDF
legacy driver under it (`driver/i2c.c`):
- a transfer waits at most 100 ms x (1 + bytes) (`i2c_master_cmd_begin`); ESP_ERR_TIMEOUT becomes
  OSError(ETIMEDOUT) (116, newlib), a NACK (ESP_FAIL) OSError(ENODEV) (19);
- a slave holding SDA low makes the master lose arbitration, which the driver files as a timeout
  (I2C_STATUS_TIMEOUT); on a timeout it resets its state machine and clears the bus itself
  (`i2c_hw_fsm_reset` -> `i2c_master_clear_bus`: SCL pulsed while SDA reads low, at most 9 times,
  then a STOP). `Spec.i2c_driver_clears_bus` (default true, as on the part) turns that off, to
  model a driver that leaves a stuck bus stuck;
- `machine.Pin(n, Pin.OPEN_DRAIN)` takes a pad from the peripheral (GPIO function), and
  `machine.I2C(id, ...)` again re-initialises the same peripheral object and routes the pads back.

The fault `stuck_sda` (either sensor's control file) is a slave that was sending a byte when the
master reset: from the moment it appears it holds SDA low until it has seen `stuck_clocks` (1..9)
more SCL pulses, and a STOP then returns it to idle. It is an event: it fires once each time the
fault appears, not on every access.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hil.virtual import bh1750_model, bme280_model
    from hil.virtual.vboard import Board
else:
    import bh1750_model
    import bme280_model

ENODEV = 19
ETIMEDOUT = 116
CLEAR_BUS_CLOCKS = 9  # ESP-IDF I2C_CLR_BUS_SCL_NUM


class Wires:
    """SCL and SDA: each low when anyone pulls it low (open drain, pull-ups to 1)."""

    def __init__(self) -> None:
        self.scl_out = 1  # the master's drive (1 = released)
        self.sda_out = 1
        self.hold = 0  # SCL pulses the stuck slave still needs before it lets SDA go
        self.pulses = 0  # SCL rising edges seen (a test can count a bus clear's clocks)
        self.stops = 0

    def sda(self) -> int:
        return 0 if not self.sda_out or self.hold else 1

    def scl(self) -> int:
        return self.scl_out

    def drive_scl(self, level: int) -> None:
        rising = level and not self.scl_out
        self.scl_out = 1 if level else 0
        if rising:
            self.pulses += 1
            if self.hold:
                self.hold -= 1  # the slave shifted one more bit out (or saw its ACK slot)

    def drive_sda(self, level: int) -> None:
        rising = level and not self.sda_out
        self.sda_out = 1 if level else 0
        if rising and self.scl_out and self.sda():
            self.stops += 1  # SDA low -> high while SCL is high: every slave back to idle

    def clear(self) -> None:
        """ESP-IDF's i2c_master_clear_bus on these wires."""
        self.drive_scl(0)
        self.drive_sda(1)
        n = 0
        while not self.sda() and n < CLEAR_BUS_CLOCKS:
            n += 1
            self.drive_scl(1)
            self.drive_scl(0)
        self.drive_sda(0)
        self.drive_scl(1)
        self.drive_sda(1)


class Pin:
    """machine.Pin(n, Pin.OPEN_DRAIN, value=1) on one of the wires: value(1) releases it, value(0)
    pulls it low, value() reads the wire (what every device on it makes of it)."""

    def __init__(self, wires: Wires, line: str, board: "Board") -> None:
        self._wires = wires
        self._line = line
        self._board = board

    def value(self, level: int | None = None) -> int:
        self._board.check_watchdog()
        w = self._wires
        if level is None:
            return w.scl() if self._line == "scl" else w.sda()
        if self._line == "scl":
            w.drive_scl(level)
        else:
            w.drive_sda(level)
        return level


class VirtualI2C:
    """machine.I2C's methods over the sensor models, with the port's errno and timeouts."""

    def __init__(self, board: "Board") -> None:
        self._board = board
        spec = board.spec
        self.bme280 = bme280_model.BME280Model(spec.calibration, spec.seed, spec.noise_lsb)
        self.bh1750 = bh1750_model.BH1750Model()
        self.bme280_addr = spec.bme280_addr
        self.bh1750_addr = spec.bh1750_addr
        self.wires = Wires()
        self.timeouts = 0  # transfers that ended in ETIMEDOUT
        self.driver_clears = 0  # bus clears the (modelled) ESP-IDF driver did on its own
        self._stuck_seen = False

    def reinit(self) -> None:
        """machine.I2C(id, ...) again: the pads back to the peripheral, both lines released."""
        self.wires.drive_scl(1)
        self.wires.drive_sda(1)

    def _transfer(self, nbytes: int) -> None:
        """A transfer of nbytes on the wire: a stuck SDA ends it in the driver's timeout."""
        board = self._board
        now = board.world_ms()
        stuck = board.fault("bme280", now) == "stuck_sda" or board.fault("bh1750", now) == "stuck_sda"
        if stuck and not self._stuck_seen:
            self.wires.hold = board.spec.stuck_clocks  # reset mid-byte: the slave keeps SDA low
        self._stuck_seen = stuck
        if self.wires.sda() and self.wires.scl():
            return
        board.block_ms(100 * (1 + nbytes))  # the driver's wait for a command that cannot finish
        self.timeouts += 1
        if board.spec.i2c_driver_clears_bus:
            self.driver_clears += 1
            self.wires.clear()
        raise OSError(ETIMEDOUT)

    def _device(self, addr: int, nbytes: int) -> object:
        now = self._board.world_ms()
        for name in ("bme280", "bh1750"):
            if self._board.fault(name, now) == "hang":
                # A board call that never returns (not what a stuck bus does on the port: its
                # transfers time out, see above); kept to prove the watchdog fires inside a call.
                self._board.block_ms(int(self._board.spec.hang_s * 1000))
                break
        self._transfer(nbytes)
        if addr == self.bme280_addr:
            self.bme280.fault = self._board.fault("bme280", now)
            if self.bme280.fault != "nack":
                return self.bme280
        elif addr == self.bh1750_addr:
            self.bh1750.fault = self._board.fault("bh1750", now)
            if self.bh1750.fault != "nack":
                return self.bh1750
        raise OSError(ENODEV)

    # The port's readfrom_mem and writeto_mem are one command each: the register byte and the data,
    # all counted in the timeout (machine_i2c.c: 100 ms x (1 + register byte + data bytes)).
    def readfrom_mem_into(self, addr: int, reg: int, buf: bytearray) -> None:
        dev = self._device(addr, 1 + len(buf))
        if not isinstance(dev, bme280_model.BME280Model):
            raise OSError(ENODEV)
        buf[:] = dev.read(reg, len(buf), self._board.world_ms())

    def writeto_mem(self, addr: int, reg: int, buf: bytes | bytearray) -> None:
        dev = self._device(addr, 1 + len(buf))
        if not isinstance(dev, bme280_model.BME280Model):
            raise OSError(ENODEV)
        dev.write(reg, bytes(buf), self._board.world_ms())

    def writeto(self, addr: int, buf: bytes | bytearray) -> int:
        dev = self._device(addr, len(buf))
        if isinstance(dev, bh1750_model.BH1750Model):
            for cmd in buf:
                dev.command(cmd, self._board.world_ms())
        return 1

    def readfrom_into(self, addr: int, buf: bytearray) -> None:
        dev = self._device(addr, len(buf))
        if not isinstance(dev, bh1750_model.BH1750Model):
            raise OSError(ENODEV)
        buf[:] = dev.read(len(buf), self._board.world_ms())

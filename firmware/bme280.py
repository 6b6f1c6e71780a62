"""Bosch BME280 driver: forced mode, 1x oversampling, filter off, integer compensation.

Integer compensation (Bosch datasheet section 4.2.3, 32-bit T/H and 64-bit P) is used on purpose:
ESP32 MicroPython floats are single precision, integers are arbitrary precision, so the integer
formulas give the datasheet's exact results on the board and on the unix port alike.
"""

from micropython import const

import crc8
from sensor import SensorError, errno_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machine import I2C

    from board_esp32 import Board

CHIP_ID = const(0x60)
_REG_CALIB0 = const(0x88)  # 0x88..0xA1, 26 bytes
_CALIB0_LEN = const(26)
_REG_CALIB1 = const(0xE1)  # 0xE1..0xE7, 7 bytes
_CALIB1_LEN = const(7)
_REG_CALIB_CRC = const(0xE8)
_REG_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)
_SOFT_RESET = const(0xB6)
_STATUS_IM_UPDATE = const(0x01)
_RESET_DEADLINE_MS = const(20)  # press msb..hum lsb, 8 bytes
_STATUS_MEASURING = const(0x08)
_OSRS_1X = const(1)
_MODE_FORCED = const(1)
# Datasheet 9.1: t_meas,max = 1.25 + 2.3*T + (2.3*P + 0.575) + (2.3*H + 0.575) ms at 1x = 9.3 ms.
_MEASURE_DEADLINE_MS = const(40)
# 0x80000 / 0x8000 are the ADC reset values the chip reports for a skipped or absent conversion.
_ADC_SKIPPED_20 = const(0x80000)
_ADC_SKIPPED_16 = const(0x8000)


def _s16(lo: int, hi: int) -> int:
    v = lo | (hi << 8)
    return v - 0x10000 if v & 0x8000 else v


def _u16(lo: int, hi: int) -> int:
    return lo | (hi << 8)


def _s8(v: int) -> int:
    return v - 0x100 if v & 0x80 else v


def _s12(v: int) -> int:
    return v - 0x1000 if v & 0x800 else v


def _tdiv(a: int, b: int) -> int:
    """C's truncating integer division (Python's // floors), as the Bosch code assumes."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def calibration_crc(block0: bytes | bytearray | memoryview, block1: bytes | bytearray | memoryview) -> int:
    return crc8.finish(crc8.crc8(block1, crc8.crc8(block0)))


def parse_calibration(b0: bytes | bytearray | memoryview, b1: bytes | bytearray | memoryview) -> tuple:
    """(T1..T3, P1..P9, H1..H6) from the two calibration blocks.

    H4 and H5 are signed 12-bit values sharing 0xE5: H4 = E4[7:0]<<4 | E5[3:0], H5 = E6<<4 | E5[7:4].
    """
    t = (_u16(b0[0], b0[1]), _s16(b0[2], b0[3]), _s16(b0[4], b0[5]))
    p = (_u16(b0[6], b0[7]),) + tuple(_s16(b0[i], b0[i + 1]) for i in range(8, 24, 2))
    h4 = _s12((b1[3] << 4) | (b1[4] & 0x0F))
    h5 = _s12((b1[5] << 4) | (b1[4] >> 4))
    h = (b0[25], _s16(b1[0], b1[1]), b1[2], h4, h5, _s8(b1[6]))
    return t + p + h


def compensate_t(adc_t: int, cal: tuple) -> tuple:
    """Returns (temperature in 0.01 degC, t_fine)."""
    t1, t2, t3 = cal[0], cal[1], cal[2]
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    d = (adc_t >> 4) - t1
    var2 = (((d * d) >> 12) * t3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_p(adc_p: int, t_fine: int, cal: tuple) -> int:
    """Pressure in Pa as Q24.8 (divide by 256), or 0 when the calibration would divide by zero."""
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal[3:12]
    var1 = t_fine - 128000
    var2 = var1 * var1 * p6
    var2 = var2 + ((var1 * p5) << 17)
    var2 = var2 + (p4 << 35)
    var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
    var1 = (((1 << 47) + var1) * p1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _tdiv(((p << 31) - var2) * 3125, var1)
    var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (p7 << 4)


def compensate_h(adc_h: int, t_fine: int, cal: tuple) -> int:
    """Relative humidity in %RH as Q22.10 (divide by 1024), clamped to 0..100 %."""
    h1, h2, h3, h4, h5, h6 = cal[12:18]
    v = t_fine - 76800
    a = ((adc_h << 14) - (h4 << 20) - (h5 * v) + 16384) >> 15
    b = (((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192
    v = a * (b >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    if v < 0:
        v = 0
    if v > 419430400:
        v = 419430400
    return v >> 12


class BME280:
    """One sensor on an I2C bus. `start()` checks chip id and calibration CRC; `read()` measures once."""

    def __init__(self, i2c: I2C, addr: int, board: Board, stuck_after: int = 5) -> None:
        self._i2c = i2c
        self._addr = addr
        self._board = board
        self._stuck_after = stuck_after
        self._buf1 = bytearray(1)
        self._b0 = bytearray(_CALIB0_LEN)
        self._b1 = bytearray(_CALIB1_LEN)
        self._data = bytearray(8)
        self._last = bytearray(8)
        self._same = 0
        self.cal: tuple = ()
        # Calibration CRC mismatch read the same twice: clone parts ship a wrong CRC byte. Bosch's
        # driver treats it as a warning; the calibration is used and the health says so.
        self.crc_warning = False

    def _read_reg(self, reg: int) -> int:
        self._i2c.readfrom_mem_into(self._addr, reg, self._buf1)
        return self._buf1[0]

    def _write_reg(self, reg: int, value: int) -> None:
        self._buf1[0] = value
        self._i2c.writeto_mem(self._addr, reg, self._buf1)

    def start(self) -> None:
        """Verify the chip and its calibration; raises SensorError naming what is wrong."""
        try:
            chip = self._read_reg(_REG_ID)
            if chip != CHIP_ID:
                raise SensorError("chip_id", "0x%02x at 0x%02x, expected 0x60" % (chip, self._addr))
            # Soft reset, then wait for the NVM copy (status.im_update) before reading calibration:
            # a re-init after a glitch starts from the chip's power-on state.
            self._write_reg(_REG_RESET, _SOFT_RESET)
            board = self._board
            deadline = board.ticks_add(board.ticks_ms(), _RESET_DEADLINE_MS)
            board.sleep_ms(2)  # start-up time, datasheet table 1
            while self._read_reg(_REG_STATUS) & _STATUS_IM_UPDATE:
                if board.ticks_diff(deadline, board.ticks_ms()) <= 0:
                    raise SensorError("timeout", "bme280 still copying its NVM after reset")
                board.sleep_ms(1)
            self._i2c.readfrom_mem_into(self._addr, _REG_CALIB0, self._b0)
            self._i2c.readfrom_mem_into(self._addr, _REG_CALIB1, self._b1)
            stored = self._read_reg(_REG_CALIB_CRC)
            computed = calibration_crc(self._b0, self._b1)
            self.crc_warning = False
            if stored != computed:
                first = calibration_crc(self._b0, self._b1)
                self._i2c.readfrom_mem_into(self._addr, _REG_CALIB0, self._b0)
                self._i2c.readfrom_mem_into(self._addr, _REG_CALIB1, self._b1)
                if calibration_crc(self._b0, self._b1) != first:
                    raise SensorError("crc", "calibration reads differ (bus errors?)")
                self.crc_warning = True  # stable calibration, wrong CRC byte: a clone part
            self.cal = parse_calibration(self._b0, self._b1)
            # Humidity oversampling only takes effect after a ctrl_meas write, so ctrl_hum goes first.
            self._write_reg(_REG_CTRL_HUM, _OSRS_1X)
            self._write_reg(_REG_CONFIG, 0)  # filter off
            self._write_reg(_REG_CTRL_MEAS, 0)  # sleep until a forced measurement
        except OSError as exc:
            raise SensorError("i2c", "bme280 at 0x%02x: %s" % (self._addr, exc), errno_of(exc))

    def read_raw(self) -> tuple:
        """One forced conversion; returns (adc_t, adc_p, adc_h)."""
        try:
            self._write_reg(_REG_CTRL_HUM, _OSRS_1X)
            self._write_reg(_REG_CTRL_MEAS, (_OSRS_1X << 5) | (_OSRS_1X << 2) | _MODE_FORCED)
            board = self._board
            deadline = board.ticks_add(board.ticks_ms(), _MEASURE_DEADLINE_MS)
            board.sleep_ms(2)
            while self._read_reg(_REG_STATUS) & _STATUS_MEASURING:
                if board.ticks_diff(deadline, board.ticks_ms()) <= 0:
                    raise SensorError("timeout", "bme280 still measuring after %d ms" % _MEASURE_DEADLINE_MS)
                board.sleep_ms(1)
            self._i2c.readfrom_mem_into(self._addr, _REG_DATA, self._data)
        except OSError as exc:
            raise SensorError("i2c", "bme280 at 0x%02x: %s" % (self._addr, exc), errno_of(exc))
        d = self._data
        if d == self._last:
            self._same += 1
            if self._same >= self._stuck_after:
                raise SensorError("stuck", "bme280 returned the same raw frame %d times" % (self._same + 1))
        else:
            self._same = 0
            self._last[:] = d
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        if adc_t == _ADC_SKIPPED_20 or adc_p == _ADC_SKIPPED_20 or adc_h == _ADC_SKIPPED_16:
            raise SensorError("skipped", "bme280 reported the ADC reset value (no conversion)")
        return adc_t, adc_p, adc_h

    def read(self) -> tuple:
        """(temperature degC, humidity %RH, pressure hPa) as floats; raises SensorError."""
        adc_t, adc_p, adc_h = self.read_raw()
        t100, t_fine = compensate_t(adc_t, self.cal)
        p256 = compensate_p(adc_p, t_fine, self.cal)
        if p256 == 0:
            raise SensorError("calibration", "pressure compensation divides by zero")
        h1024 = compensate_h(adc_h, t_fine, self.cal)
        return t100 / 100, h1024 / 1024, p256 / 25600

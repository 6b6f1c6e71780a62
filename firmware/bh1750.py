"""ROHM BH1750 ambient light sensor: one-time high-resolution mode with a settable MTreg.

lux = raw / 1.2 * 69 / MTreg (datasheet p.11). The sensor powers down after each one-time
measurement, so every read powers it on first.
"""

from micropython import const

from sensor import SensorError, errno_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machine import I2C

    from board_esp32 import Board

_POWER_ON = const(0x01)
_ONE_TIME_H = const(0x20)
_MT_HIGH = const(0x40)  # 01000_MT[7:5]
_MT_LOW = const(0x60)  # 011_MT[4:0]
MTREG_DEFAULT = const(69)
MTREG_MIN = const(31)
MTREG_MAX = const(254)
# H-resolution conversion takes at most 180 ms at MTreg 69 and scales with MTreg.
_MAX_CONVERSION_MS = const(180)


def lux(raw: int, mtreg: int) -> float:
    return raw / 1.2 * MTREG_DEFAULT / mtreg


def conversion_ms(mtreg: int) -> int:
    return (_MAX_CONVERSION_MS * mtreg + MTREG_DEFAULT - 1) // MTREG_DEFAULT


class BH1750:
    def __init__(self, i2c: I2C, addr: int, board: Board, mtreg: int = MTREG_DEFAULT) -> None:
        if not MTREG_MIN <= mtreg <= MTREG_MAX:
            raise ValueError("mtreg must be 31..254")
        self._i2c = i2c
        self._addr = addr
        self._board = board
        self.mtreg = mtreg
        self._cmd = bytearray(1)
        self._data = bytearray(2)

    def _command(self, cmd: int) -> None:
        self._cmd[0] = cmd
        self._i2c.writeto(self._addr, self._cmd)

    def start(self) -> None:
        try:
            self._command(_POWER_ON)
            self._command(_MT_HIGH | (self.mtreg >> 5))
            self._command(_MT_LOW | (self.mtreg & 0x1F))
        except OSError as exc:
            raise SensorError("i2c", "bh1750 at 0x%02x: %s" % (self._addr, exc), errno_of(exc))

    def read_raw(self) -> int:
        try:
            self._command(_POWER_ON)
            self._command(_ONE_TIME_H)
            # The chip has no ready flag: waiting its datasheet maximum is the only way to know.
            self._board.sleep_ms(conversion_ms(self.mtreg))
            self._i2c.readfrom_into(self._addr, self._data)
        except OSError as exc:
            raise SensorError("i2c", "bh1750 at 0x%02x: %s" % (self._addr, exc), errno_of(exc))
        return (self._data[0] << 8) | self._data[1]

    def read(self) -> float:
        return lux(self.read_raw(), self.mtreg)

"""Register-level (command-level: the chip has no registers) model of a ROHM BH1750.

Power on/down, one-time and continuous H-resolution modes, MTreg set by its two split commands,
and a conversion time that scales with MTreg; the data register holds the last result.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

POWER_DOWN = 0x00
POWER_ON = 0x01
RESET = 0x07
CONT_H = 0x10
ONE_TIME_H = 0x20
MTREG_DEFAULT = 69
TYPICAL_CONVERSION_MS = 120
FAULTS = ("", "nack", "stuck")


def raw_for(lux: float, mtreg: int) -> int:
    """The 16-bit count for a light level: inverse of lux = raw / 1.2 * 69 / MTreg."""
    raw = int(lux * 1.2 * mtreg / MTREG_DEFAULT + 0.5)
    return 0 if raw < 0 else 0xFFFF if raw > 0xFFFF else raw


class BH1750Model:
    def __init__(self) -> None:
        self.powered = False
        self.mtreg = MTREG_DEFAULT
        self.data = 0
        self.fault = ""
        self.source: Callable[[int], float | None] | None = None  # now_ms -> lux
        self.conversions = 0
        self._pending: int | None = None
        self._ready_ms = 0
        self._one_time = False

    def _latch(self, now_ms: int) -> None:
        if self._pending is not None and now_ms >= self._ready_ms:
            if self.fault != "stuck":
                self.data = self._pending
            self._pending = None
            if self._one_time:
                self.powered = False  # one-time modes power down after the measurement

    def _start(self, now_ms: int, one_time: bool) -> None:
        if not self.powered:
            return  # measurement commands are ignored while powered down
        self.conversions += 1
        self._one_time = one_time
        lux = self.source(now_ms) if self.source is not None else None
        self._pending = raw_for(lux, self.mtreg) if lux is not None else self.data
        self._ready_ms = now_ms + TYPICAL_CONVERSION_MS * self.mtreg // MTREG_DEFAULT

    def command(self, cmd: int, now_ms: int) -> None:
        self._latch(now_ms)
        if cmd == POWER_DOWN:
            self.powered = False
        elif cmd == POWER_ON:
            self.powered = True
        elif cmd == RESET:
            if self.powered:
                self.data = 0
        elif cmd & 0xF8 == 0x40:
            self.mtreg = (self.mtreg & 0x1F) | ((cmd & 0x07) << 5)
        elif cmd & 0xE0 == 0x60:
            self.mtreg = (self.mtreg & 0xE0) | (cmd & 0x1F)
        elif cmd in (CONT_H, 0x11, 0x13):
            self._start(now_ms, False)
        elif cmd in (ONE_TIME_H, 0x21, 0x23):
            self._start(now_ms, True)

    def read(self, n: int, now_ms: int) -> bytes:
        self._latch(now_ms)
        out = bytes(((self.data >> 8) & 0xFF, self.data & 0xFF))
        return out[:n]

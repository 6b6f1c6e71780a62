"""Register-level model of a Bosch BME280 for virtual boards and oracle tests.

It serves the chip id, the calibration blocks with their CRC-8 at 0xE8, ctrl/status registers and
the ADC data registers. A forced-mode write starts a conversion: the model asks its `source` for
the true conditions, inverts the datasheet's floating-point compensation with this chip's
calibration to find the raw ADC codes, adds a few LSB of deterministic noise (a real 1x-sampled
ADC is never perfectly still), and latches them when the conversion time has passed.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

REG_CALIB0 = 0x88
REG_CALIB1 = 0xE1
REG_CRC = 0xE8
REG_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7
CHIP_ID = 0x60
BMP280_ID = 0x58
CONVERSION_MS = 9
FAULTS = ("", "nack", "wrong_id", "bad_crc", "stuck")

# T1..T3 and P1..P9 from the BMP280 datasheet example, H1..H6 typical of real parts.
TYPICAL = (
    27504,
    26435,
    -1000,
    36477,
    -10685,
    3024,
    2855,
    140,
    -7,
    15500,
    -14600,
    6000,
    75,
    362,
    0,
    313,
    50,
    30,
)


def _le16(value: int) -> tuple[int, int]:
    value &= 0xFFFF
    return value & 0xFF, value >> 8


def calibration_blocks(cal: tuple[int, ...]) -> tuple[bytes, bytes]:
    """The register images 0x88..0xA1 (26 bytes) and 0xE1..0xE7 (7 bytes) of a calibration."""
    b0 = bytearray(26)
    for i in range(12):
        b0[2 * i], b0[2 * i + 1] = _le16(cal[i])
    b0[24] = 0  # 0xA0 is reserved
    b0[25] = cal[12] & 0xFF
    h2, h3, h4, h5, h6 = cal[13], cal[14], cal[15], cal[16], cal[17]
    b1 = bytearray(7)
    b1[0], b1[1] = _le16(h2)
    b1[2] = h3 & 0xFF
    b1[3] = (h4 >> 4) & 0xFF
    b1[4] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)
    b1[5] = (h5 >> 4) & 0xFF
    b1[6] = h6 & 0xFF
    return bytes(b0), bytes(b1)


def crc8_calibration(b0: bytes, b1: bytes) -> int:
    crc = 0xFF
    for byte in b0 + b1:
        for bit in range(7, -1, -1):
            top = (crc >> 7) ^ ((byte >> bit) & 1)
            crc = (crc << 1) & 0xFF
            if top:
                crc ^= 0x1D
    return crc ^ 0xFF


def temperature_f(adc_t: float, cal: tuple[int, ...]) -> tuple[float, int]:
    """Datasheet double-precision temperature: (degC, t_fine)."""
    t1, t2, t3 = cal[0], cal[1], cal[2]
    var1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
    d = adc_t / 131072.0 - t1 / 8192.0
    var2 = d * d * t3
    return (var1 + var2) / 5120.0, int(var1 + var2)


def pressure_f(adc_p: float, t_fine: int, cal: tuple[int, ...]) -> float:
    """Datasheet double-precision pressure in Pa (0.0 for a calibration that divides by zero)."""
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal[3:12]
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * p6 / 32768.0
    var2 = var2 + var1 * p5 * 2.0
    var2 = var2 / 4.0 + p4 * 65536.0
    var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * p1
    if var1 == 0.0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = p9 * p * p / 2147483648.0
    var2 = p * p8 / 32768.0
    return p + (var1 + var2 + p7) / 16.0


def humidity_f(adc_h: float, t_fine: int, cal: tuple[int, ...]) -> float:
    """Datasheet double-precision relative humidity in %, unclamped."""
    h1, h2, h3, h4, h5, h6 = cal[12:18]
    v = t_fine - 76800.0
    v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v))
    )
    return v * (1.0 - h1 * v / 524288.0)


def _search(target: float, lo: int, hi: int, rising: bool, fn: "Callable[[int], float]") -> int:
    """The code in [lo, hi] whose value fn(code) is closest to target, for monotonic fn."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value = fn(mid)
        if (value < target) == rising:
            lo = mid
        else:
            hi = mid
    a, b = fn(lo), fn(hi)
    return lo if abs(a - target) <= abs(b - target) else hi


def raw_for(t_c: float, rh: float, p_pa: float, cal: tuple[int, ...]) -> tuple[int, int, int]:
    """Raw ADC codes (adc_t, adc_p, adc_h) that compensate to the given conditions."""
    adc_t = _search(t_c, 0, (1 << 20) - 1, True, lambda c: temperature_f(c, cal)[0])
    t_fine = temperature_f(adc_t, cal)[1]
    adc_p = _search(p_pa, 0, (1 << 20) - 1, False, lambda c: pressure_f(c, t_fine, cal))
    adc_h = _search(rh, 0, 0xFFFF, True, lambda c: humidity_f(c, t_fine, cal))
    return adc_t, adc_p, adc_h


class BME280Model:
    def __init__(self, cal: tuple[int, ...] = TYPICAL, seed: int = 1, noise_lsb: int = 2) -> None:
        self.cal = cal
        self.regs = bytearray(256)
        self.fault = ""
        self.noise_lsb = noise_lsb
        # now_ms -> (degC, %RH, Pa) the chip is exposed to; None keeps the fixed image (set_raw).
        self.source: Callable[[int], tuple[float, float, float] | None] | None = None
        self.conversions = 0
        self._rand = (seed * 2654435761 + 1) & 0xFFFFFFFF
        self._pending: tuple[int, int, int] | None = None
        self._fixed: tuple[int, int, int] | None = None
        self._ready_ms = 0
        self.load_calibration(cal)
        self._reset()

    def load_calibration(self, cal: tuple[int, ...]) -> None:
        self.cal = cal
        b0, b1 = calibration_blocks(cal)
        self.regs[REG_CALIB0 : REG_CALIB0 + 26] = b0
        self.regs[REG_CALIB1 : REG_CALIB1 + 7] = b1
        self.regs[REG_CRC] = crc8_calibration(b0, b1)

    def _reset(self) -> None:
        self.regs[REG_ID] = CHIP_ID
        for reg in (REG_CTRL_HUM, REG_STATUS, REG_CTRL_MEAS, REG_CONFIG):
            self.regs[reg] = 0
        # Reset values of press/temp/hum data: 0x80000, 0x80000, 0x8000.
        self.regs[REG_DATA : REG_DATA + 8] = bytes((0x80, 0, 0, 0x80, 0, 0, 0x80, 0))
        self._pending = None

    def _noise(self) -> int:
        self._rand = (self._rand * 1103515245 + 12345) & 0x7FFFFFFF
        span = 2 * self.noise_lsb + 1
        return (self._rand >> 8) % span - self.noise_lsb

    def set_raw(self, adc_t: int, adc_p: int, adc_h: int) -> None:
        """Fix the raw codes every conversion yields (a fixed register image, no source)."""
        self._fixed = (adc_t, adc_p, adc_h)
        self._store(adc_t, adc_p, adc_h)

    def _store(self, adc_t: int, adc_p: int, adc_h: int) -> None:
        d = self.regs
        d[REG_DATA] = (adc_p >> 12) & 0xFF
        d[REG_DATA + 1] = (adc_p >> 4) & 0xFF
        d[REG_DATA + 2] = (adc_p & 0x0F) << 4
        d[REG_DATA + 3] = (adc_t >> 12) & 0xFF
        d[REG_DATA + 4] = (adc_t >> 4) & 0xFF
        d[REG_DATA + 5] = (adc_t & 0x0F) << 4
        d[REG_DATA + 6] = (adc_h >> 8) & 0xFF
        d[REG_DATA + 7] = adc_h & 0xFF

    def _latch(self, now_ms: int) -> None:
        if self._pending is not None and now_ms >= self._ready_ms:
            if self.fault != "stuck":
                self._store(*self._pending)
            self._pending = None
            self.regs[REG_CTRL_MEAS] &= 0xFC  # back to sleep mode after a forced conversion
        self.regs[REG_STATUS] = 0x08 if self._pending is not None else 0

    def _start_conversion(self, now_ms: int) -> None:
        self.conversions += 1
        self._ready_ms = now_ms + CONVERSION_MS
        if self.source is None:
            self._pending = self._fixed
            return
        conditions = self.source(now_ms)
        if conditions is None:
            return
        adc_t, adc_p, adc_h = raw_for(conditions[0], conditions[1], conditions[2], self.cal)
        n = self.noise_lsb
        if n:
            adc_t += self._noise()
            adc_p += self._noise()
            adc_h += self._noise()
        self._pending = (min(max(adc_t, 0), 0xFFFFF), min(max(adc_p, 0), 0xFFFFF), min(max(adc_h, 0), 0xFFFF))
        self._ready_ms = now_ms + CONVERSION_MS

    def read(self, reg: int, n: int, now_ms: int) -> bytes:
        self._latch(now_ms)
        out = bytearray(self.regs[reg : reg + n])
        if self.fault == "wrong_id" and reg <= REG_ID < reg + n:
            out[REG_ID - reg] = BMP280_ID
        if self.fault == "bad_crc" and reg <= REG_CRC < reg + n:
            out[REG_CRC - reg] ^= 0x5A
        return bytes(out)

    def write(self, reg: int, data: bytes, now_ms: int) -> None:
        for i, value in enumerate(data):
            r = reg + i
            if r == REG_RESET:
                if value == 0xB6:
                    self._reset()
                continue
            if r not in (REG_CTRL_HUM, REG_CTRL_MEAS, REG_CONFIG):
                continue  # read-only registers ignore writes, as on the chip
            self.regs[r] = value
            if r == REG_CTRL_MEAS and value & 0x03 in (1, 2):
                self._start_conversion(now_ms)
        self._latch(now_ms)

"""I2C bus clear (I2C-bus specification UM10204, 3.1.16): free SDA from a slave that holds it low.

A slave that was sending a byte when the master reset (a watchdog or brown-out reset of the ESP32
mid-transfer, the sensors kept powered) still drives SDA low for the bits it has left; every
transfer then fails (the port raises OSError(ETIMEDOUT): the master loses arbitration). Up to 9
SCL pulses let it shift the rest of its byte out and see its ACK slot; a STOP then returns it to
idle. ESP-IDF's legacy driver under the 1.22-1.24 port does this itself after a timeout; this is
the firmware's own second line for a driver that does not, or a bus that is still low after it.
"""

from micropython import const

import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from board_esp32 import Board
    from node import Sensor

ENODEV = const(19)  # a NACK, the same value in newlib and Linux: not a stuck bus
MAX_CLOCKS = const(9)  # a byte and its ACK slot
_HALF_US = const(5)  # half an SCL period: 100 kHz, slow enough for any slave on the bus


def clear(board: Board) -> int:
    """Clock SCL while SDA reads low (at most 9 pulses), then a STOP, then the I2C peripheral back
    on its pins. Returns the pulses it took (0: SDA was already high), or -1 if SDA stayed low."""
    scl, sda = board.i2c_pins()  # open drain, released; taken from the peripheral
    pulses = 0
    try:
        while not sda.value() and pulses < MAX_CLOCKS:
            scl.value(0)
            board.sleep_us(_HALF_US)
            scl.value(1)
            board.sleep_us(_HALF_US)
            pulses += 1
        if pulses:
            # STOP: SDA low -> high while SCL is high.
            scl.value(0)
            board.sleep_us(_HALF_US)
            sda.value(0)
            board.sleep_us(_HALF_US)
            scl.value(1)
            board.sleep_us(_HALF_US)
            sda.value(1)
            board.sleep_us(_HALF_US)
        free = sda.value()
    finally:
        board.i2c_reinit()
    return pulses if free else -1


def recover(board: Board, a: Sensor, b: Sensor, clears: int) -> int:
    """After a transfer failed other than by a NACK (on the port: ETIMEDOUT, lost arbitration):
    if a slave holds SDA low, clock it free and make both sensors start again (chip id, soft
    reset, calibration, MTreg). Returns 1 if it ran a clear (counted in health), else 0."""
    a.bus_suspect = b.bus_suspect = False
    pulses = clear(board)
    if not pulses:
        return 0  # SDA reads high: not held (or the driver cleared it already)
    a.started = b.started = False
    if pulses < 0:
        log.event("i2c_bus_stuck", pulses=MAX_CLOCKS, clears=clears + 1,
                  action="SDA still low after 9 clocks: power-cycle the sensors, check SDA for a short")
    else:
        log.event("i2c_bus_cleared", pulses=pulses, clears=clears + 1)
    return 1

"""`machine` for a virtual board behind a serial console (MicroPython side, unix port).

The unix port's own `machine` has no reset(); mpremote's `reset` runs `machine.reset()`. Here it asks
the board's serial supervisor (hil/serial_board.py) for a hard reset by creating `<control>/reset`,
then waits to be killed, as a chip stops executing when it resets.
"""

import os
import time

_CONTROL = os.getenv("VBOARD_CONTROL") or ""


def reset() -> None:
    if not _CONTROL:
        raise OSError(19)  # ENODEV: not started by a serial supervisor
    with open(_CONTROL + "/reset", "w") as f:
        f.write("machine.reset")
    while True:
        time.sleep(1)


def soft_reset() -> None:
    raise SystemExit(0)


def idle() -> None:
    time.sleep_ms(1)  # type: ignore[attr-defined]


def freq() -> int:
    return 240000000


def unique_id() -> bytes:
    return (os.getenv("VBOARD_DEVICE") or "vboard").encode()[:6]

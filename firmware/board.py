"""Picks the board layer: real ESP32 hardware, or the virtual board on the unix port."""

import sys

if sys.platform == "esp32":
    from board_esp32 import Board
else:
    from vboard import Board  # type: ignore[no-redef]  # supplied by hil/virtual on MICROPYPATH


def load() -> Board:
    return Board()

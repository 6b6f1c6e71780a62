"""Picks the board layer: real ESP32 hardware, or the virtual board on the unix port."""

import sys

if sys.platform == "esp32":
    from board_esp32 import Board
else:
    from vboard import Board  # type: ignore[no-redef]  # supplied by hil/virtual on MICROPYPATH

_board = None


def load() -> Board:
    """The one board of this boot: boot.py (an update's journal) and the node share it, so the
    reset cause is read once and a watchdog armed at boot is the node's."""
    global _board
    if _board is None:
        _board = Board()
    return _board

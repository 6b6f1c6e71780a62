"""bench/*.py import each other by their file names (bench/soak.py runs with bench/ on sys.path): the
tests of the soak's own modules import them the same way. Appended, so bench/ shadows nothing."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

# mypy: ignore-errors
# (MicroPython side: imported by vstart.py only when the rig armed control/cut_in_boot)
"""The rig's fault `control/cut_in_boot` (N): the power goes after boot.py's N-th flash operation (a
rename or a remove: the steps of an update's swap or rollback), then comes back. A stand-in for `os`
counts them while boot.py runs. The file is taken when the cut happens, so the next boot runs on."""

import os
import sys


class _PowerCut:
    def __init__(self, after: int, path: str) -> None:
        self.left = after
        self.path = path

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def _op(self) -> None:
        if self.left <= 0:
            os.remove(self.path)
            print("power_cut during=boot.py")
            raise SystemExit(5)  # EXIT_POWER_CUT: the supervisor powers the board up again
        self.left -= 1

    def rename(self, a: str, b: str) -> None:
        self._op()
        os.rename(a, b)

    def remove(self, p: str) -> None:
        self._op()
        os.remove(p)


_path = (os.getenv("VBOARD_CONTROL") or "") + "/cut_in_boot"
with open(_path) as f:
    sys.modules["os"] = _PowerCut(int(f.read()), _path)

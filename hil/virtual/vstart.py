# mypy: ignore-errors
# (MicroPython side: imported once by vboot.py and vport.py, then dropped from the heap)
"""The port's start between mounting the flash and main.py: the flash first on sys.path, then boot.py
(from the flash, or the firmware folder that stands for the flashed image) run and forgotten, as the
ESP32 port's main.c runs it with pyexec_file_if_exists. An error in boot.py is printed and main.py
still runs; a SystemExit (a reset from boot.py) ends the interpreter. Kept out of vboot.py so that its
code leaves the heap before main.py starts: the port's C start costs an ESP32 no heap at all."""

import os
import sys

if sys.path[0] != "":
    sys.path.insert(0, "")  # the flash first, as the port's sys.path ('', '.frozen', '/lib')


def _found(name: str) -> bool:
    for folder in sys.path:
        try:
            os.stat((folder + "/" if folder else "") + name)
            return True
        except OSError:
            pass
    return False


class _PowerCut:
    """The rig's fault `control/cut_in_boot` (N): the power goes after boot.py's N-th flash operation
    (a rename or a remove: the steps of an update's swap or rollback), then comes back. The file is
    taken when the cut happens, so the board's next boot runs on."""

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


if _found("boot.py"):
    _control = os.getenv("VBOARD_CONTROL") or ""
    try:
        with open(_control + "/cut_in_boot") as f:
            sys.modules["os"] = _PowerCut(int(f.read()), _control + "/cut_in_boot")
    except (OSError, ValueError):
        pass
    try:
        import boot  # noqa: F401
    except Exception as exc:
        sys.print_exception(exc)
    sys.modules.pop("boot", None)
    sys.modules["os"] = os

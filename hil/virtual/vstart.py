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


if _found("boot.py"):
    try:
        os.stat((os.getenv("VBOARD_CONTROL") or "") + "/cut_in_boot")
        import vcut  # noqa: F401  (the rig's power cut inside boot.py: a stand-in `os` counts its steps)
    except (OSError, ValueError):  # not armed, or not a number: no cut
        pass
    try:
        import boot  # noqa: F401
    except Exception as exc:
        sys.print_exception(exc)
    sys.modules.pop("boot", None)
    _cut = sys.modules.pop("os", os)  # (a built-in module is not in sys.modules: only the stand-in)
    if _cut is not os:  # the power cut's stand-in ends with boot.py, also in the firmware modules
        for _m in list(sys.modules.values()):  # a trial boot loaded while it was in place
            if getattr(_m, "os", None) is _cut:
                _m.os = os
        sys.modules.pop("vcut", None)
    del _cut

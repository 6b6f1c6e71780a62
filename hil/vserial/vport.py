# mypy: ignore-errors
# (MicroPython side: what a board behind a serial console runs at power-on instead of main.py)
"""The ESP32 port's start on the unix port: boot.py, then main.py, from the flash (the working
directory), as the port's main.c does (hil/virtual/vstart.py runs boot.py). main.py's own error ends
the interpreter (the supervisor then shows the REPL)."""

import sys

sys.path[0] = ""  # the flash, not this folder: the port's sys.path ('', '.frozen', '/lib')
import vstart  # noqa: E402

del sys.modules["vstart"], vstart
try:
    open("main.py").close()
except OSError:
    pass  # nothing to run: the REPL
else:
    import main  # noqa: F401

"""Virtual boards: register-level sensor models, a scripted environment and the unix-port board layer.

The modules here are written in the subset of Python that both CPython and MicroPython run, so the
same model code serves the firmware on the unix port and the host-side tests and oracles. They
import nothing from each other through the package (MicroPython loads them as top-level modules).
"""

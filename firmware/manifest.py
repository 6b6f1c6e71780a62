# Freeze the firmware into a MicroPython image (manifest syntax: docs.micropython.org, "MicroPython
# manifest files"). Frozen modules run from flash as bytecode: nothing to compile at boot, and
# their code and constant strings stay out of the heap. Build from a MicroPython checkout:
#
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/this/repo/firmware/manifest.py
#
# Then flash the image, and copy only config.json, boot.py and main.py to the board (they stay files:
# the port runs boot.py and main.py from the file system at boot). On the board '' comes before '.frozen' in
# sys.path, so a module left on the file system shadows its frozen twin: remove them.
# Not a firmware module: not copied to boards, not imported (hil/paths.firmware_files skips it).

# The port's own frozen modules, as the stock image (the firmware needs none of them).
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821

# Every firmware module but boot.py and main.py; tests/firmware/test_manifest.py keeps this list complete.
for name in (
    "bh1750",
    "bme280",
    "board",
    "board_esp32",
    "config",
    "crc8",
    "fleet",
    "i2cbus",
    "link",
    "log",
    "mqtt",
    "node",
    "ntp",
    "ota",
    "otaboot",
    "outbox",
    "remote_config",
    "sensor",
    "tlsctx",
):
    module(name + ".py")  # noqa: F821  (base_path: this file's folder)

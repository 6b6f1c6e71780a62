"""`python -m gateway` runs the same command as `iot gateway`."""

import sys

from iot.app.cli import main

sys.exit(main(["gateway", *sys.argv[1:]]))

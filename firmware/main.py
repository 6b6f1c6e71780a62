# Boot entry. Compiling a module from source needs large contiguous blocks of heap, so the largest
# go first on a fresh heap (on the unix port the virtual board layer is the largest of all), with a
# collection between them. `iot flash --mpy` avoids compiling on the board at all.
import gc

import board  # noqa: F401

gc.collect()
import mqtt  # noqa: E402,F401

gc.collect()
from node import main  # noqa: E402

gc.collect()
main()

# Boot entry. The board layer is imported first: compiling it needs the largest contiguous blocks,
# which a fresh heap still has (on the unix port the virtual layer is larger than board_esp32).
import board  # noqa: F401
from node import main

main()

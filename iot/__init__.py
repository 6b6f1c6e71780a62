"""The kernel: the contract and what every part shares."""

# iot.contract and iot.codec import each other (the codec reads the contract's names, the contract
# re-exports the codec): loaded here, the contract always comes first, whichever of the two is asked.
from iot import contract as contract

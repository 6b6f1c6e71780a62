"""Fleet operations on the host: remote configuration (`iot config`) and signed over-the-air updates
(`iot ota`) for boards provisioned with `iot devices`. The board's side is firmware/remote_config.py,
ota.py and otaboot.py; the wire is in iot/contract.py and docs/CONTRACT.md."""

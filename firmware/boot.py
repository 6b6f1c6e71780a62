# Run by the port before main.py at every boot (not frozen, not in update bundles: `iot flash` puts it
# on the board). Only when an over-the-air update left its journal does it load otaboot, which
# finishes a swap, counts a trial boot or rolls the update back before any firmware module loads.
import gc


def _ota_journal() -> None:
    import os
    import sys

    try:
        os.stat("ota.d/state")
    except OSError:
        return
    try:
        import otaboot

        otaboot.run()
    except Exception as exc:  # the firmware must still start: main.py runs the files in place
        print("ota_boot_failed error=" + repr(exc))
    sys.modules.pop("otaboot", None)  # its code is not needed again this boot


_ota_journal()
del _ota_journal
gc.collect()

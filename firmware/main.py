# Boot entry. Compiling a module from source needs large contiguous blocks of heap, so the largest
# go first on a fresh heap (on the unix port the virtual board layer is the largest of all), with a
# collection between them. `iot flash --mpy` avoids compiling on the board at all.
import gc

try:
    import board  # noqa: F401

    gc.collect()
    import mqtt  # noqa: E402,F401

    gc.collect()
    from node import main  # noqa: E402
except Exception as exc:
    import otaboot

    otaboot.load_failed(exc)  # an update on trial: recorded and reset, boot.py rolls it back
    raise  # otherwise the REPL stays free for `iot flash`, as before

gc.collect()
main()

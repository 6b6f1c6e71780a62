"""What every sensor driver raises, and the per-sensor error bookkeeping the node reports."""


class SensorError(Exception):
    """A failed measurement; `kind` is a stable short code (i2c, chip_id, crc, stuck, ...)."""

    def __init__(self, kind: str, detail: str, code: int = 0) -> None:
        super().__init__(kind + ": " + detail)
        self.kind = kind
        self.detail = detail
        self.code = code  # the OSError's errno for kind i2c (ENODEV: a NACK), else 0


def errno_of(exc: OSError) -> int:
    return exc.args[0] if exc.args else 0

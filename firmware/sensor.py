"""What every sensor driver raises, and the per-sensor error bookkeeping the node reports."""


class SensorError(Exception):
    """A failed measurement; `kind` is a stable short code (i2c, chip_id, crc, stuck, ...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind + ": " + detail)
        self.kind = kind
        self.detail = detail

"""CRC-8 as used for the BME280 calibration image at 0xE8: poly 0x1D, init 0xFF, xorout 0xFF, MSB first.

That parameter set is CRC-8/SAE-J1850, whose published check value ("123456789") is 0x4B.
"""


def crc8(data: bytes | bytearray | memoryview, crc: int = 0xFF) -> int:
    """Run the register over `data` starting from `crc`; returns the raw register (no final xor)."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 0x80:
                crc = ((crc << 1) ^ 0x1D) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
    return crc


def finish(crc: int) -> int:
    return crc ^ 0xFF

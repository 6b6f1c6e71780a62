"""The firmware's NTP client (RFC 5905): a request, and a reply checked before the clock is set.

micropython-lib's ntptime checks neither the reply's length, mode nor stratum: a zero transmit time
(an unsynchronised server) becomes 2036 and is taken as valid (a broker certificate then looks
expired), a reply under 44 bytes raises ValueError. The board only moves the bytes
(`board.ntp_query`); what they mean is decided here, the same on an ESP32 and a virtual board.
"""

from micropython import const

LEN = const(48)
_NTP_TO_1970 = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_ERA = 0x100000000
MIN_EPOCH_S = 1735689600  # 2025-01-01: a board of this firmware never lives before it
MAX_EPOCH_S = 4102444800  # 2100-01-01


def request(buf: bytearray) -> None:
    """A client request (LI 0, version 4, mode 3) in buf[:48]."""
    buf[0] = 0x23
    for i in range(1, LEN):
        buf[i] = 0


def parse(buf: bytearray, n: int) -> int:
    """The server's transmit time as Unix seconds; ValueError naming what is wrong with the reply."""
    if n < LEN:
        raise ValueError("short reply: %d of %d bytes" % (n, LEN))
    mode = buf[0] & 7
    if mode != 4:
        raise ValueError("mode %d, not a server reply" % mode)
    stratum = buf[1]
    if buf[0] >> 6 == 3 or not 1 <= stratum <= 15:
        raise ValueError("server not synchronised (stratum %d)" % stratum)
    secs = (buf[40] << 24) | (buf[41] << 16) | (buf[42] << 8) | buf[43]
    if not secs:
        raise ValueError("no transmit time")
    epoch = secs - _NTP_TO_1970
    if epoch < MIN_EPOCH_S:
        epoch += _ERA  # NTP era 1 began on 2036-02-07
    if not MIN_EPOCH_S <= epoch < MAX_EPOCH_S:
        raise ValueError("time %d is not between 2025 and 2100" % epoch)
    return epoch

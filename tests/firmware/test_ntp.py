"""The firmware's NTP reply check (firmware/ntp.py) on the unix port: what ntptime took as valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit

NOW = 1796774400  # 2026-12-08 00:00 UTC
ERA1 = 2208988800 + 4_200_000_000 - (1 << 32)  # 2103: NTP seconds after the 2036 wrap, too late


def test_replies_are_checked_for_length_mode_stratum_and_year(tmp_path: Path) -> None:
    code = f"""
import json, ntp
def reply(first=0x24, stratum=2, secs={NOW} + 2208988800, n=48):
    b = bytearray(48)
    b[0], b[1] = first, stratum
    b[40:44] = (secs & 0xFFFFFFFF).to_bytes(4, "big")
    return b, n
out = []
for args in ({{}}, {{"secs": 0}}, {{"n": 40}}, {{"first": 0x23}}, {{"stratum": 0}}, {{"first": 0xE4}},
             {{"secs": 2208988800 + 946684800}}, {{"secs": {ERA1}}}):
    b, n = reply(**args)
    try:
        out.append(ntp.parse(b, n))
    except ValueError as exc:
        out.append(str(exc))
q = bytearray(b"x" * 48)
ntp.request(q)
out.append([q[0], sum(q[1:])])
print(json.dumps(out))
"""
    got = unixport.run_json(code, tmp_path)
    assert got == [
        NOW,
        "no transmit time",  # ntptime: 2036-02-07 (1.23 on), taken as valid
        "short reply: 40 of 48 bytes",  # ntptime: ValueError from struct, uncaught: a crash
        "mode 3, not a server reply",
        "server not synchronised (stratum 0)",  # a kiss-o'-death
        "server not synchronised (stratum 2)",  # leap indicator 3: the server's clock is not set
        f"time {946684800 + (1 << 32)} is not between 2025 and 2100",  # 2000, read as era 1: 2136
        "time 4200000000 is not between 2025 and 2100",
        [0x23, 0],
    ]

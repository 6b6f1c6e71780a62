"""When a repeated event may be logged again: the first time per key, then at most once per interval.

Bad input from a board arrives at the board's rate (a retained message at every reconnect, a poison
reading at every redelivery); one log line per message would drown the log and cost the gateway its
throughput. Counters count every one; the log says it once per key and then how many it left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["LogLimit"]


class LogLimit:
    """`check(key)` is None while `key` was logged less than `interval_s` ago, else the number of its
    events not logged since (0 the first time). Keeps at most `max_keys` keys: a hostile board can
    make up any number of ids, so once full it forgets them all and each is logged once more."""

    def __init__(
        self, interval_s: float = 60.0, max_keys: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def check(self, key: Hashable) -> int | None:
        now = self._clock()
        seen = self._keys.get(key)
        if seen is not None:
            logged_at, left_out = seen
            if now - logged_at < self._interval_s:
                self._keys[key] = (logged_at, left_out + 1)
                return None
        elif len(self._keys) >= self._max_keys:
            self._keys.clear()
        self._keys[key] = (now, 0)
        return 0 if seen is None else seen[1]

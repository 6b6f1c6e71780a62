"""The one retry policy of the backend's sinks: a MongoDB read or write, or a Kafka flush, that fails with
a `SinkError` is logged (what failed, where, what to check) and tried again with exponential backoff
until it succeeds. A batch waits rather than go without its outputs: its offsets are committed only
after they are written, so waiting loses nothing, and giving up would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, TypeVar

from iot import log

from .errors import SinkError

T = TypeVar("T")
FIRST_S: Final = 0.5
MAX_S: Final = 30.0
_log = log.get("backend")


async def until_done(event: str, fn: Callable[[], T], action: str, **fields: Any) -> T:
    """`fn()` in a worker thread, again after FIRST_S, 2 x FIRST_S, ... (at most MAX_S) while it raises
    SinkError; each failure is logged as `event` with `fields`, the error and `action`."""
    delay = FIRST_S
    while True:
        try:
            return await asyncio.to_thread(fn)
        except SinkError as exc:
            _log.error(event, **fields, error=str(exc)[:300], retry_in_s=delay, action=action)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_S)

"""The end of bench/soak.py's load: the boards stop measuring and re-send until everything is acked,
the backend stores every reading, and every window that must exist is there and final. Only then is
there anything to account for.

"Every window final" alone is not the end: the backend stores a key's readings before it writes the
windows they fall in (open windows are not rewritten while the key's input is a backlog, and go out
final at the idle close), so right after the last readings are stored their windows may not exist
yet and every window that does is final. Accounting then reported 600 sensor windows "absent" (200
boards x 1 tumbling + 2 hopping: each board's last windows). So the drain waits until the windows
the readings Kafka holds must have (iot.harness.oracle.windows_of_slots) are all there and final.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from soak_common import log, poll_until

from iot import contract, readings_store
from iot.harness.oracle import windows_complete, windows_of_slots


def expected_counts(watch: Any, specs: Any) -> dict[str, int]:
    slot = watch.slot_ms
    return {
        contract.COLL_SENSOR_WINDOWS: len(windows_of_slots(watch.device_slots, slot, specs)),
        contract.COLL_PLACE_WINDOWS: len(windows_of_slots(watch.place_slots, slot, specs)),
    }


def wait_for_the_end(
    args: Any,
    db: Any,
    published: Callable[[], int],
    outbox: Callable[[], int],
    watch: Any,
    specs: Any,
    backend_lag: Callable[[], int | None],
) -> dict[str, Any]:
    """Wait (each step with its deadline) for empty outboxes, the backend's input consumed, every
    reading stored, every expected window final; the timings say how long each took, False where a
    deadline passed. MongoDB is asked only once the backend's lag (a Kafka question) is 0 and then
    every 10 s: a count on FerretDB scans the collection, and a poll every 2 s over a million
    readings took CPU from the backend it was waiting for."""
    import pymongo

    timings: dict[str, Any] = {}
    t0 = time.time()
    timings["outboxes_empty"] = poll_until(
        # The boards' last re-sends may wait up to ack_timeout_max_s (their backoff while acks were late).
        lambda: outbox() == 0, max(args.ack_timeout * 4, args.ack_timeout_max) + 180, "every outbox empty"
    )
    timings["outboxes_empty_s"] = round(time.time() - t0, 1)
    total = published()
    timings["backend_caught_up"] = poll_until(
        lambda: backend_lag() == 0, args.drain_timeout, "backend lag 0", 2.0
    )
    timings["backend_caught_up_s"] = round(time.time() - t0, 1)

    def count(coll: str, flt: dict[str, Any]) -> int:
        return int(db[coll].count_documents(flt))

    def stored_all() -> bool:
        try:
            return readings_store.count(readings_store.collection(db)) >= total
        except pymongo.errors.PyMongoError:
            return False

    left = max(60.0, args.drain_timeout - (time.time() - t0))
    timings["readings_stored"] = poll_until(stored_all, left, "every reading in MongoDB", 10.0)
    timings["readings_stored_s"] = round(time.time() - t0, 1)
    # Kafka holds every distinct reading by now (they are stored): the watch knows their windows.
    poll_until(lambda: watch.distinct() >= total, 60, "the watch read every reading")
    expected = expected_counts(watch, specs)
    log("waiting_for_windows", **expected)

    def complete() -> bool:
        try:
            return windows_complete(count, expected)
        except pymongo.errors.PyMongoError:
            return False

    # Windows go final an idle timeout after the last reading; with readings still missing (the
    # backend behind) they cannot all be, so the soak looks once and reports.
    window_wait = min(300.0, args.drain_timeout) if timings["readings_stored"] else 10.0
    timings["windows_final"] = poll_until(
        complete, args.idle + args.grace + window_wait, "every expected window final", 10.0
    )
    timings["windows_final_s"] = round(time.time() - t0, 1)
    timings["windows_expected"] = expected
    return timings

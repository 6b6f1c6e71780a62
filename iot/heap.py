"""The services' heap: the memory a burst freed handed back to the operating system, and the cyclic
garbage collector tuned for what a service keeps in flight.

A Kafka outage or a fleet reconnecting at once fills the gateway's and the backend's buffers; once they
drain, glibc keeps the freed pages in its arenas (one per thread that allocated: librdkafka's, the Mongo
writers') and the RSS stays at the burst's high-water mark for the life of the process, which looks
like a leak to anyone watching the dashboards. `malloc_trim(0)` returns the free pages of every arena,
also those in the middle of a heap (glibc 2.8+). Elsewhere (musl, macOS) it is absent and this does
nothing.

The cyclic collector: both services run with GC_THRESHOLDS (`collector_tuned()`, by their CLIs), not
CPython's default (700, 10, 10). What lives across collections in either is mostly in flight, and with
the default it survived two young collections, reached the oldest generation and triggered full passes
over all of it (measured with gc.callbacks, issue #24):
- backend: the fetched records waiting in the batch queues (up to 4 batches of ConsumerMessages, each with
  Faust's weak references) and the batch being computed; a full pass every ~70k allocations (the oldest
  generation is small, so they soon exceed its quarter), in a 250k-reading backlog 36 full passes of ~100
  ms, 4.5 s of collection in all, a third of the worker's CPU. With these: 1.1 s in all. Cyclic garbage
  still goes at the next young collection (a batch makes ~20 allocations a reading); refcounting frees the
  rest as before.
- gateway: each reading in flight is a _Pending, its Outgoing record and the delivery callback's closure,
  held until Kafka confirms it. Draining a backlog, when Mosquitto overshot the Receive Maximum before the
  gateway held IOT_GATEWAY_MAX_IN_FLIGHT itself (bridge.may_take; 22-138k of a 150k backlog received and
  not yet acked at once): 9-11 full passes of 32-93 ms, 10-22 % of its CPU (median 14 %, 5 drains), and 6
  % while live at 8-17k readings/s. With these: 2-6 % and 0.5 %, no full pass while running, the same RSS
  for the same readings in flight. At a fleet's pace (1,000 readings/s) the default took 0.1-0.3 % and
  these nothing (CPU per reading unchanged): few readings are in flight and refcounting frees them. The
  gateway makes little cyclic garbage, so a young generation of 20,000 objects holds back little memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Final

__all__ = ["EVERY_S", "GC_THRESHOLDS", "collector_tuned", "release_free_memory"]

# A young generation of 20,000 objects and fewer passes of the older ones (the docstring says why).
GC_THRESHOLDS: Final = (20_000, 50, 20)

# How often the backend trims (the gateway trims with its stats line, every 30 s). Measured: 15 ms
# right after 150 MB were freed, 0.6 ms when there is nothing to give back.
EVERY_S = 60.0


def _load() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _load()


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True if the C library can and released some."""
    return bool(_TRIM(0)) if _TRIM is not None else False


def collector_tuned() -> None:
    """Run the cyclic garbage collector with GC_THRESHOLDS from now on (a service, once it is built)."""
    gc.set_threshold(*GC_THRESHOLDS)

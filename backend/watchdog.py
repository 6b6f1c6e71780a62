"""The second line of defence against a worker that is alive and consumes nothing.

Two waits in the consumer have no timeout: Faust's rebalance (a revocation waits until every fetched
record is acked, recovery until the changelogs are read) and an offset commit (aiokafka retries until
the group coordinator answers, and the fetch loop's commit-every waits for it). Each has stopped a
worker for good after a Kafka SIGKILL: a revocation waiting on records its queue had dropped
(`transport.BatchQueue`), a commit waiting on a coordinator lookup that a dead metadata task never
answered (`transport` correction 4); in both the process stayed up and its metrics said nothing.

`StallWatch` exports how long the current rebalance and the oldest pending commit have lasted
(`iot_backend_rebalance_seconds`, `iot_backend_commit_wait_seconds`, alerted on in compose's
Prometheus rules). When one outlasts IOT_BACKEND_STALL_S the worker logs `consumer_stalled`, counts it
(`iot_backend_stalls_total{wait}`) and, `linger_s` later (time for a scrape), exits with EX_TEMPFAIL for
its supervisor (compose's restart policy, systemd) to start it again. A restarted worker resumes from
the committed offsets: nothing lost, since offsets are committed only after a batch's outputs are
written, nothing doubled, since de-duplication is exact (the kill -9 tests prove both for an exit at
any moment). A clean stop is not attempted: it could wait on the stall itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Final

from iot import log

from .metrics import BackendMetrics

_log = log.get("backend")
EX_TEMPFAIL: Final = 75  # sysexits.h: a temporary failure, the caller may try again
LINGER_S: Final = 15.0
REBALANCE: Final = "rebalance"
COMMIT: Final = "commit"


class StallWatch:
    """Told every few seconds whether Faust is rebalancing and since when a commit is pending; acts
    once when either wait outlasts `stall_s`."""

    def __init__(
        self,
        stall_s: float,
        metrics: BackendMetrics,
        linger_s: float = LINGER_S,
        clock: Callable[[], float] = time.monotonic,
        exit_later: Callable[[float, int], None] | None = None,
    ) -> None:
        self.stall_s = stall_s
        self.metrics = metrics
        self.linger_s = linger_s
        self.clock = clock
        self.exit_later = exit_later or exit_after
        self.rebalance_since: float | None = None
        self.stalled = False

    def observe(self, rebalancing: bool, commit_since: float | None, partitions: int) -> dict[str, float]:
        """Seconds the current rebalance and the oldest pending commit (`commit_since`, on this
        watch's clock) have lasted, 0 when none. The first time one is past `stall_s`: log and count
        the stall, and have the process exit `linger_s` later."""
        now = self.clock()
        if not rebalancing:
            self.rebalance_since = None
        elif self.rebalance_since is None:
            self.rebalance_since = now
        lasted = {
            REBALANCE: 0.0 if self.rebalance_since is None else now - self.rebalance_since,
            COMMIT: 0.0 if commit_since is None else now - commit_since,
        }
        self.metrics.rebalance_seconds.set(lasted[REBALANCE])
        self.metrics.commit_wait_seconds.set(lasted[COMMIT])
        stuck = [wait for wait, seconds in lasted.items() if seconds > self.stall_s]
        if stuck and not self.stalled:
            self.stalled = True
            wait = stuck[0]
            self.metrics.stalls.labels(wait).inc()
            _log.error(
                "consumer_stalled",
                wait=wait,
                seconds=round(lasted[wait], 1),
                limit_s=self.stall_s,
                partitions=partitions,
                exit_in_s=self.linger_s,
                exit_code=EX_TEMPFAIL,
                action="the worker exits for its supervisor to start it again, and resumes from the"
                " committed offsets (nothing lost or doubled); without a supervisor, start `iot backend`"
                " again. Unless Kafka was away that long, send this log to the backend's developers",
            )
            self.exit_later(self.linger_s, EX_TEMPFAIL)
        return lasted


def exit_after(delay_s: float, code: int) -> None:
    """Exit the process `delay_s` from now, whatever its event loop is waiting on."""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    asyncio.get_running_loop().call_later(delay_s, leave)

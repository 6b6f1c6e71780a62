"""A rebalance that comes while a worker's batch waits on a service: the worker finishes the rebalance
and stores every reading once, in windows equal to the oracle's.

The short soak's failure (CI on 44ca1d1): after its Kafka kill the backend never consumed again, its
lag flat for 900 s, its process alive. Kafka died while a batch waited to flush and the next fetch
rounds waited in the agent's queue; back, Kafka no longer knew the worker's member, so the worker
rejoined, and the revocation cleared the queue, then waited (Faust's `Consumer.wait_empty`, no
timeout) for the cleared records to be acked. The fetch loop still referenced the last round while it
waited for the flow to resume, so they never left Faust's unacked set (a WeakSet): the revocation
never ended and the flow never resumed.

Whether Kafka forgets the member over its restart depends on when the worker's first heartbeat lands
(a test around a Kafka SIGKILL stalled in 3 of its 4 runs). Here each ingredient is certain: the
batch waits on a stopped MongoDB (SIGSTOP of a FerretDB of the test's own) and the rebalance comes
from a second worker's SIGKILL.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot import readings_store
from iot.harness.stack import PrivateStack, private_ferretdb
from tests.support import unique, wait_for

from .conftest import BASE_TS, PARTITIONS, BackendRig, assert_results_of_one_run, backend_rig, make_reading

pytestmark = pytest.mark.integration
REVOKED = "Revoking previously assigned partitions frozenset"


@pytest.fixture
def ferretdb(tmp_path: Path) -> Iterator[PrivateStack]:
    with private_ferretdb(tmp_path / "ferretdb") as stack:
        yield stack


@pytest.fixture
def private_rig(
    tmp_path: Path, ferretdb: PrivateStack, request: pytest.FixtureRequest
) -> Iterator[BackendRig]:
    with backend_rig(tmp_path, request, ferretdb.mongo_uri.rsplit("/", 1)[0]) as r:
        # Small batches: one waits on MongoDB while the fetch loop fills the queue behind it.
        r.extra_env["IOT_BACKEND_BATCH_MAX"] = "50"
        yield r


def stop(stack: PrivateStack, sig: signal.Signals) -> None:
    pid = stack.pid("ferretdb")
    assert pid is not None
    os.kill(pid, sig)


def test_a_rebalance_while_a_batch_waits_on_mongodb_ends_and_every_reading_is_stored_once(
    private_rig: BackendRig, ferretdb: PrivateStack
) -> None:
    rig = private_rig
    places = [unique("p") for _ in range(3)]
    devices = [(places[i % 3], unique("d")) for i in range(2 * PARTITIONS)]
    partition_of = {d: i % PARTITIONS for i, (_, d) in enumerate(devices)}
    names = list(partition_of)
    # Event time 5 ms apart per round of devices: the whole script stays within the grace period.
    script = [make_reading(p, d, seq, BASE_TS + 1000 + seq * 5) for seq in range(120) for p, d in devices]
    warm, backlog = script[: 2 * len(devices)], script[2 * len(devices) :]
    stored = readings_store.collection(rig.db)

    def count() -> int:
        return readings_store.count(stored, names)

    one, two = rig.worker(), rig.worker()
    wait_for(lambda: rig.members_with_partitions() == 2, 90, "both workers owning partitions")
    rig.produce(warm, partition_of)
    wait_for(lambda: count() == len(warm), 60, "the first readings stored")

    stop(ferretdb, signal.SIGSTOP)
    try:
        # Each worker's agent takes a batch and waits on MongoDB; its fetch loop fills the queue.
        rig.produce(backlog, partition_of)
        revoked = one.log().count(REVOKED)
        two.kill()
        # The dead member's session expires and the survivor's partitions are revoked: its revocation
        # clears the queue behind the waiting batch.
        wait_for(lambda: one.alive() and one.log().count(REVOKED) > revoked, 60, "the survivor's revocation")
    finally:
        stop(ferretdb, signal.SIGCONT)

    # Before the fix the survivor never left that revocation: the count stayed where it was.
    wait_for(lambda: one.alive() and count() == len(script), 60, "every reading stored")
    assert_results_of_one_run(rig, script, 30)
    metrics = one.metrics()
    assert metrics.get("iot_backend_rebalance_seconds") == 0
    assert metrics.get("iot_backend_commit_wait_seconds", -1) < 10  # exported; commits return
    assert not any(name.startswith("iot_backend_stalls_total") for name in metrics)  # no stall exit

"""`iot windows` as a user meets it: one line when MongoDB is down, a line when nothing matched (with
what did) and when the table is cut at --limit. Against the native stack's MongoDB, in a database of
the test's own."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
import pytest

from iot import contract
from iot.harness.ports import free_ports

pytestmark = pytest.mark.integration
IOT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "iot"
SERVER = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"]).rsplit("/", 1)[0]


def iot_windows(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IOT_MONGO_URI": uri}
    return subprocess.run(
        [str(IOT), "windows", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def db_uri() -> Iterator[str]:
    """Five place windows of `kitchen`, one a minute, in a database of this test's own."""
    name = f"winds_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(SERVER)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    docs = []
    for i in range(5):
        start = now - timedelta(minutes=i + 1)
        docs.append(
            {
                "_id": f"kitchen:tumbling:60:{i}",
                "place": "kitchen",
                "devices": ["k-1"],
                "kind": "tumbling",
                "size_s": 60,
                "step_s": 60,
                "start": start,
                "end": start + timedelta(minutes=1),
                "count": 12,
                **{m: {"count": 12, "mean": 1.0, "min": 1.0, "max": 1.0} for m in contract.METRICS},
                "final": True,
                "revision": 0,
                "late_count": 0,
            }
        )
    client[name][contract.COLL_PLACE_WINDOWS].insert_many(docs)
    try:
        yield f"{SERVER}/{name}"
    finally:
        client.drop_database(name)
        client.close()


def test_a_stopped_mongodb_is_one_line_that_says_what_to_run() -> None:
    (port,) = free_ports(1)
    done = iot_windows(f"mongodb://127.0.0.1:{port}/iot")
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert f"MongoDB at 127.0.0.1:{port} does not answer" in line and "iot stack up" in line


def test_nothing_matched_says_so_and_names_what_would_have(db_uri: str) -> None:
    done = iot_windows(db_uri, "--place", "nosuchplace")
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.strip() == (
        "no place_windows of place 'nosuchplace' started in the last 1h; places with windows then: kitchen"
    )


def test_a_table_cut_at_the_limit_says_how_much_was_left_out(db_uri: str) -> None:
    done = iot_windows(db_uri, "--place", "kitchen", "--limit", "2")
    header, *rows = done.stdout.splitlines()
    assert header.split()[0] == "key" and len(rows) == 2
    assert "showing the newest 2 of 5 place_windows" in done.stderr
    whole = iot_windows(db_uri, "--place", "kitchen")
    assert len(whole.stdout.splitlines()) == 6 and whole.stderr == ""

"""The stack's FerretDB build (install.FERRETDB_PATCHES) answers `{_id}` statements through the
collection's `_id` index, with the same results as before.

On a FerretDB of its own: these tests create and read collections, and the explain plan must be of
this very build (the shared stack may still run a binary started before an install)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from iot.harness.stack import private_ferretdb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder: Path = tmp_path_factory.mktemp("ferretdb")
    with private_ferretdb(folder) as stack:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            stack.mongo_uri, serverSelectionTimeoutMS=10_000
        )
        try:
            yield client.get_default_database()
        finally:
            client.close()


def _plan(db: Any, coll: str, flt: dict[str, Any]) -> str:
    out = db.command("explain", {"find": coll, "filter": flt})
    return " ".join(out["queryPlanner"]["Plan"])


@pytest.mark.parametrize("make_id", [lambda i: f"w|{i:05d}", lambda i: ObjectId(f"{i:024x}")])
def test_an_id_filter_searches_the_id_index_instead_of_scanning(db: Any, make_id: Any) -> None:
    coll = db[f"plan_{type(make_id(0)).__name__}"]
    coll.insert_many([{"_id": make_id(i), "n": i} for i in range(300)])
    plan = _plan(db, coll.name, {"_id": make_id(7)})
    # Before the patch: "SCAN <table>" (every row's JSON parsed for every {_id} statement).
    assert "USING INDEX" in plan and "__id_" in plan, plan


def test_id_statements_find_replace_upsert_and_delete_the_right_document(db: Any) -> None:
    coll = db["by_id"]
    coll.insert_many([{"_id": f"w|{i:05d}", "n": i, "final": False} for i in range(300)])
    oid = ObjectId()
    coll.insert_one({"_id": oid, "n": -1})

    assert coll.find_one({"_id": "w|00042"}) == {"_id": "w|00042", "n": 42, "final": False}
    assert coll.find_one({"_id": oid}) == {"_id": oid, "n": -1}
    assert coll.find_one({"_id": "w|99999"}) is None

    res = coll.bulk_write(
        [
            pymongo.ReplaceOne({"_id": "w|00042"}, {"n": 4200, "final": True}, upsert=True),
            pymongo.ReplaceOne({"_id": "w|new"}, {"n": 7, "final": True}, upsert=True),
        ],
        ordered=False,
    )
    assert (res.matched_count, res.modified_count, res.upserted_count) == (1, 1, 1)
    assert coll.find_one({"_id": "w|00042"}) == {"_id": "w|00042", "n": 4200, "final": True}
    assert coll.find_one({"_id": "w|new"}) == {"_id": "w|new", "n": 7, "final": True}
    # Its neighbours are untouched.
    assert coll.find_one({"_id": "w|00041"}) == {"_id": "w|00041", "n": 41, "final": False}

    assert coll.delete_one({"_id": "w|00043"}).deleted_count == 1
    assert coll.find_one({"_id": "w|00043"}) is None
    assert coll.count_documents({}) == 301

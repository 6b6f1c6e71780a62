"""A batch's amendments applied to the closed windows' stored documents, without I/O (the reads and
rebuilds around it: backend/amending.py).

Amendments (readings for windows already closed, within the allowed lateness) are not applied from
memory: `ScopeEngine.process` lists them in `Outputs.amends`, the runtime loads those window documents
from the store, and `apply` (ScopeEngine.amend) adds the readings to them (`revision` + 1, `late_count`
+ n). The document's `offset` (highest input offset counted) makes that read-modify-write idempotent: a
key's readings come from one partition in offset order, so after a crash a replayed reading at or below
it is already in. A stored document that is not a valid window (backend/stored.py) is listed in
`Outputs.corrupt`; the runtime rebuilds it from the stored readings and calls `apply` again with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iot import contract

from .accumulators import WindowAcc
from .batch_io import Outputs
from .records import SENSOR, window_doc
from .stored import CorruptWindow, Rebuilt, StoredWindow, late_count_of, parse_window, revision_of

__all__ = ["apply"]


def apply(
    scope: str,
    out: Outputs,
    stored: Mapping[str, Mapping[str, Any]],
    now_ms: int,
    rebuilt: Mapping[str, Rebuilt] | None = None,
) -> None:
    """Apply `out.amends` to the stored documents (by `_id`; a window absent from `stored` never
    opened and is created, directly final), filling `out.amended_docs`. A stored document that is
    no valid window goes to `out.corrupt` and is left out, unless `rebuilt` holds that window
    rebuilt from the stored readings: then it goes on from there. Can be called again."""
    out.amended_docs, out.amended_readings, out.corrupt, out.rebuilt = [], 0, {}, []
    # A window can close and take a late reading within one batch: its final document is then
    # still in this batch's outputs, not yet stored. Of the two, the one with the higher fence
    # is the more advanced (after a crash the stored one can be ahead of the replay).
    batch_finals = {d["_id"]: d for d in out.final_docs}
    for wid, amendment in out.amends.items():
        key, wkey = amendment.key, amendment.wkey
        bases: list[StoredWindow] = []
        ours = batch_finals.get(wid)
        if ours is not None:
            bases.append(parse_window(ours, scope, key, wkey))
        doc = stored.get(wid)
        counted: set[str] = set()
        if doc is not None:
            try:
                bases.append(parse_window(doc, scope, key, wkey))
            except CorruptWindow as exc:
                again = rebuilt.get(wid) if rebuilt is not None else None
                if again is None:
                    out.corrupt[wid] = (doc, exc.detail)
                    continue
                # Every stored reading of the window (and this batch's, the runtime adds them):
                # nothing of `ours` is missing from it, so it is the only base.
                acc = again.acc.copy()
                acc.offset = -1
                bases = [StoredWindow(acc, revision_of(doc), late_count_of(doc), amendment.place)]
                counted = again.ids
                out.rebuilt.append(wid)
        base = max(bases, key=lambda b: b.acc.offset) if bases else None
        if base is None:
            acc, revision, late_count, place = WindowAcc(), -1, 0, amendment.place
        else:
            acc, revision, late_count, place = base.acc, base.revision, base.late_count, base.place
        if scope != SENSOR:
            place = amendment.place
        fence = acc.offset
        added = 0
        for reading, offset in amendment.readings:
            if 0 <= offset <= fence:
                continue  # counted before a crash: the document already holds it
            if counted and contract.reading_id(reading["device"], reading["boot"], reading["seq"]) in counted:
                acc.offset = max(acc.offset, offset)
                continue  # stored already, so in the rebuilt window
            acc.add(reading, offset)
            added += 1
        if not added and wid not in out.rebuilt:
            continue
        out.amended_readings += added
        out.amended_docs.append(
            window_doc(
                scope,
                key,
                place,
                wkey,
                acc,
                True,
                now_ms,
                revision=revision + 1,
                late_count=late_count + added,
            )
        )

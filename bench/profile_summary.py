"""Summarise a py-spy raw profile of an `iot backend` worker (bench/backend_throughput.py --profile).

Each sample of each thread is put in one activity by the frames on its stack (our code first, then the
libraries'), and the share of that thread's samples is printed. Sampled with --idle, so a thread that
waits (the event loop in select, a writer thread on FerretDB's socket) is counted too: shares are of
wall time, not of CPU.

    .venv/bin/python bench/profile_summary.py /tmp/profile.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

# (activity, frame substrings that put a sample in it); the first match, innermost frame first, wins.
MAIN_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode + validate", ("decode_reading", "decode_forwarded", "validate_reading", "_valid_fields")),
    ("window docs (shape)", ("window_doc",)),
    ("changelog state (to_json + send)", ("Lander.persist", "KeyState.to_json", "send_changelog")),
    ("windows + dedup (engine)", ("ScopeEngine.", "KeyState.", "WindowAcc.", "MetricAcc.", "SeqSet.")),
    ("metrics", ("Lander.count", "BackendMetrics.")),
    # backend/batches.py's path around the engine (with backend/intake.py's loops over a batch's
    # records, backend/landing.py's and backend/watermarks.py's), and the agents' loop in backend/app.py.
    (
        "batch glue (our agents)",
        ("Batches.", "Lander.", "Watermarks.", "Intake.", "agent.<locals>.windows", "BackendRuntime._tick"),
    ),
    ("idle (event loop select)", ("EpollSelector.select",)),
    ("aiokafka (protocol, fetch, produce)", ("aiokafka",)),
    ("faust/mode (streams, acks, commits)", ("faust", "mode/", "Stream.", "Consumer.", "Conductor", "Agent")),
)
WRITER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mongo readings", ("write_readings",)),
    ("mongo windows", ("write_windows",)),
    ("kafka produce + flush", ("KafkaSink.",)),
    ("idle (waiting for work)", ("_worker", "queue", "Queue.get")),
)


# With uvloop the loop's wait (epoll) and its callback dispatch are C: py-spy sees the Python frame
# that called the loop as the innermost one, and cannot tell waiting from dispatching.
UVLOOP_LEAVES = ("Worker.execute_from_commandline", "run_until_complete", "run_forever")


def activity(frames: list[str], rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    if frames and any(leaf in frames[-1] for leaf in UVLOOP_LEAVES):
        return "uvloop (C: idle and callback dispatch)"
    for frame in reversed(frames):
        for name, needles in rules:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarise(path: Path) -> dict[str, Counter[str]]:
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not count.isdigit():
            continue
        thread = re.sub(r"^thread \(\d+\):\s*", "", frames[0])
        if thread.startswith("MainThread"):
            groups["event loop (MainThread)"][activity(frames, MAIN_RULES)] += int(count)
        elif thread.startswith(("asyncio_", "uvloop_")):
            # asyncio.to_thread: the sink and Kafka writes of the sensor and place batches.
            groups["writer threads (to_thread, all)"][activity(frames, WRITER_RULES)] += int(count)
    return groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    args = ap.parse_args()
    for group, counts in summarise(args.profile).items():
        total = sum(counts.values())
        print(f"{group}: {total} samples")
        for name, n in counts.most_common():
            print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

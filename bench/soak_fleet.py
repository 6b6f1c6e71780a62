"""The fleet side of bench/soak.py: many firmware-like boards (bench/soak_board.py) in one asyncio
process, apart from every measured one.

    python bench/soak_fleet.py CONFIG.json      # started by bench/soak.py; commands on stdin:
        stop            stop measuring new readings (keep re-sending until everything is acked)
        outage SECONDS  drop every connection and stay offline that long (a Wi-Fi/broker outage)
        quit            write the final report to config["out"] and exit
Every second it prints one JSON line of counters on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from collections import deque
from typing import Any

from soak_board import Board


class Fleet:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.rate_hz: float = config["rate_hz"]
        self.ack_timeout_s: float = config["ack_timeout_s"]
        self.ack_timeout_max_s: float = config["ack_timeout_max_s"]
        self.out: str = config["out"]
        # Each board's own account (client id = device id, bound by the broker); none: anonymous.
        self.passwords: dict[str, str] = config.get("passwords") or {}
        self.boards = [
            Board(self, place, device, config["boot"], index)
            for index, (place, device) in enumerate(config["boards"])
        ]
        self.measuring = True
        self.quitting = False
        self.outage_until = 0.0
        self.published = self.sent = self.resent = self.released = 0
        self.acks = self.bad_acks = self.connects = self.refused = 0
        self.puback_timeouts = self.keepalive_timeouts = self.revived = self.ack_timeouts = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.latency = array("q")
        self.send_ts = array("q")  # ts of each reading, in order of first PUBLISH
        self.send_lag = array("q")  # ms from a reading's ts to its first PUBLISH
        self.loop_lag = array("q")  # ms a reading was measured after it was due (a starved process)

    async def main(self) -> None:
        self.tasks = tasks = [asyncio.create_task(b.run()) for b in self.boards]
        producer = asyncio.create_task(self.produce())
        keeper = asyncio.create_task(self.keep())
        await self.commands()
        self.quitting = True
        for board in self.boards:
            if board.link is not None:
                board.link.close()
            board.lost.set()
        for task in (*tasks, producer, keeper):
            task.cancel()
        await asyncio.gather(*tasks, producer, keeper, return_exceptions=True)
        self.report()

    async def produce(self) -> None:
        period = 1.0 / self.rate_hz
        start = time.monotonic()
        # Phases spread evenly over one period; one shared period keeps the deque sorted by due time.
        due: deque[tuple[float, Board]] = deque(
            (start + period * i / len(self.boards), b) for i, b in enumerate(self.boards)
        )
        while self.measuring:
            now = time.monotonic()
            while due and due[0][0] <= now:
                when, board = due.popleft()
                self.loop_lag.append(int((now - when) * 1000))
                board.measure()
                due.append((when + period, board))
            await asyncio.sleep(max(0.0, min(0.05, due[0][0] - time.monotonic())) if due else 0.05)

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for board in self.boards:
                board.housekeeping(now)
            self.revive()
            self.stats()

    def revive(self) -> None:
        """A board's connection task must never end while the fleet runs (one did, once, in a 2,000-board
        soak, and its readings then sat on it forever): report how and start it again."""
        if self.quitting:
            return
        for i, task in enumerate(self.tasks):
            if not task.done():
                continue
            board = self.boards[i]
            error = "cancelled" if task.cancelled() else repr(task.exception())
            sys.stderr.write(f"board_task_ended device={board.device} error={error} action=restarted\n")
            sys.stderr.flush()
            self.revived += 1
            board.lost.set()
            self.tasks[i] = asyncio.create_task(board.run())

    def stats(self) -> None:
        line = {
            "t": time.time(),
            "published": self.published,
            "sent": self.sent,
            "resent": self.resent,
            "released": self.released,
            "outbox": sum(len(b.outbox) for b in self.boards),
            "connected": sum(1 for b in self.boards if b.ready),
            "dropped": sum(len(b.outbox.dropped) for b in self.boards),
            "acks": self.acks,
            "bad_acks": self.bad_acks,
            "connects": self.connects,
            "refused": self.refused,
            "puback_timeouts": self.puback_timeouts,
            "ack_timeouts": self.ack_timeouts,
            "keepalive_timeouts": self.keepalive_timeouts,
            "revived": self.revived,
            "not_ready_with_outbox": sum(1 for b in self.boards if b.outbox and not b.ready),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                return
            if line[0] == "stop":
                self.measuring = False
            elif line[0] == "outage":
                self.outage_until = time.monotonic() + float(line[1])
                for board in self.boards:
                    if board.link is not None:
                        board.link.close()

    def report(self) -> None:
        boards = {
            b.device: {
                "place": b.place,
                "boot": b.boot,
                "next_seq": b.next_seq,
                "unacked": [e.seq for e in b.outbox.entries],
                "dropped": b.outbox.dropped,
                "ready": b.ready,
                "linked": b.link is not None,
                "inflight": b.outbox.sending,
                "queued": len(b.outbox) - b.outbox.sending,
            }
            for b in self.boards
        }
        with open(self.out, "w") as f:
            json.dump(
                {
                    "boards": boards,
                    "ack_latency_ms": self.latency.tolist(),
                    "send_ts": self.send_ts.tolist(),
                    "send_lag_ms": self.send_lag.tolist(),
                    "loop_lag_ms": self.loop_lag.tolist(),
                },
                f,
            )
        self.stats()
        sys.stdout.write(json.dumps({"final": True}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(Fleet(json.load(f)).main())

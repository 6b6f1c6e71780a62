"""The child processes of bench/soak.py: the product's services (`iot gateway`, `iot backend`) and
the fleet processes (bench/soak_fleet.py), each restartable or stoppable, each with its log in the
soak folder and dying with the soak."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soak_common import IOT, PYTHON, REPO, die_with_parent, poll_until


@dataclass
class Service:
    """`iot gateway` / `iot backend`, restartable, with its log in the soak folder."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[Service], bool]
    proc: subprocess.Popen[bytes] | None = None
    planned_down: bool = False
    starts: int = 0
    unplanned: list[dict[str, Any]] = field(default_factory=list)
    command: list[str] | None = None  # instead of `iot <args>` (bench/soak_traced.py)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 120.0) -> bool:
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                self.command or [IOT, *self.args],
                env=self.env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                preexec_fn=die_with_parent,
            )
        self.starts += 1
        ok = poll_until(
            lambda: self.proc is not None and self.proc.poll() is None and self.ready(self),
            timeout,
            f"{self.name} ready",
        )
        self.planned_down = False
        return ok

    def kill9(self) -> None:
        self.planned_down = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.planned_down = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class FleetProc:
    """One bench/soak_fleet.py process: commands on its stdin, one JSON stats line a second on its
    stdout, its final report in a file."""

    def __init__(self, index: int, boards: list[tuple[str, str]], cfg: dict[str, Any], folder: Path) -> None:
        self.index = index
        self.boards = boards
        self.out = folder / f"fleet{index}.json"
        config = {**cfg, "boards": boards, "out": str(self.out)}
        conf_path = folder / f"fleet{index}.conf.json"
        conf_path.write_text(json.dumps(config))
        self.log = (folder / f"fleet{index}.log").open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, str(REPO / "bench" / "soak_fleet.py"), str(conf_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            preexec_fn=die_with_parent,
        )
        self.stats: dict[str, Any] = {}
        self.final = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc.poll() is None else None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("final"):
                self.final.set()
            else:
                self.stats = data

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        self.command("quit")
        self.final.wait(timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()

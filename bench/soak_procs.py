"""The child processes of bench/soak.py: the product's services (`iot gateway`, `iot backend`) and
the fleet processes (bench/soak_fleet.py), each restartable or stoppable, each with its log in the
soak folder and dying with the soak (the harness's launcher)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from soak_common import PYTHON, REPO, log

from iot.harness.children import IOT, Child
from iot.harness.errors import ChildFailed


class Service(Child):
    """`iot gateway` / `iot backend`, restartable, with its log in the soak folder; `command` runs it
    another way (bench/soak_traced.py)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        metrics_port: int,
        ready: Callable[[Service], bool],
        command: list[str] | None = None,
    ) -> None:
        super().__init__(name, command or [IOT, *args], log_path, env, cwd=REPO, metrics_port=metrics_port)
        self.ready = ready
        self.planned_down = False
        self.unplanned: list[dict[str, Any]] = []

    def launch(self, timeout: float = 120.0) -> bool:
        """Start it and wait until it is ready; False (logged) when it is not within `timeout`."""
        self.start()
        try:
            self.wait_ready(lambda: self.ready(self), timeout)
            ok = True
        except ChildFailed as exc:
            log("not_ready", service=self.name, error=str(exc).splitlines()[0])
            ok = False
        self.planned_down = False
        return ok

    def kill9(self) -> None:
        self.planned_down = True
        self.kill()

    def stop(self, timeout: float = 30.0) -> int | None:
        self.planned_down = True
        return super().stop(timeout)


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
        self.child = Child(
            f"fleet{index}",
            [PYTHON, str(REPO / "bench" / "soak_fleet.py"), str(conf_path)],
            folder / f"fleet{index}.log",
            interactive=True,
        ).start()
        assert self.child.proc is not None
        self.proc = self.child.proc
        self.stats: dict[str, Any] = {}
        self.final = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.child.pid

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
        self.child.wait_exit(timeout)
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def kill(self) -> None:
        self.child.kill()

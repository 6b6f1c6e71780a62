"""Children started again when they exit, as compose's restart policy (`unless-stopped`) restarts the
services in containers: `iot demo` keeps its gateway, backend and boards running this way.

Our services exit on purpose when a fresh start can go on where they cannot: the backend's stall
watch with 75 (EX_TEMPFAIL) once a rebalance or a commit outlasted IOT_BACKEND_STALL_S, the gateway
with 70 (EX_SOFTWARE) when its MQTT network thread died. Each exit is logged with its reason
(`child_exited`), each restart (`child_restarted`) after a backoff that doubles with every restart
inside `window_s`. More than `max_restarts` there is a crash loop, which a restart would only hide:
ChildFailed with the child's log tail.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from iot import log
from iot.harness.children import Child, Children
from iot.harness.errors import ChildFailed

__all__ = ["EXIT_REASONS", "RestartPolicy", "Supervisor", "exit_reason"]

_log = log.get("harness.supervisor")

EXIT_REASONS = {
    0: "exited by itself",
    70: "an internal thread died (EX_SOFTWARE: a bug, please report it with the log)",
    75: "stalled past IOT_BACKEND_STALL_S (EX_TEMPFAIL: it asks to be started again)",
}


def exit_reason(code: int | None) -> str:
    """Why a child with exit status `code` ended, in words (negative: the signal that killed it)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return EXIT_REASONS.get(code, f"exited with {code}")


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # within window_s; one more exit there is a crash loop
    window_s: float = 300.0
    first_backoff_s: float = 1.0  # doubled for each restart within window_s
    max_backoff_s: float = 30.0


@dataclass
class _Track:
    restarts: list[float] = field(default_factory=list)  # when (clock) it was started again
    due: float | None = None  # when the exited child is to be started again


class Supervisor:
    """Call `check()` every second or so: it starts again, after their backoff, the children of
    `children` that exited, and returns a line for each exit and restart it saw (for a screen)."""

    def __init__(
        self,
        children: Children,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = children
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._tracks: dict[str, _Track] = {}

    def restarts(self, name: str) -> int:
        """How often the child `name` was started again so far."""
        return len(self._tracks.get(name, _Track()).restarts)

    def check(self) -> list[str]:
        said: list[str] = []
        for child in list(self.children.children):
            if child.alive():
                continue
            track = self._tracks.setdefault(child.name, _Track())
            if track.due is None:
                said.append(self._exited(child, track))
            elif self.clock() >= track.due:
                said.append(self._restart(child, track))
        return said

    def _exited(self, child: Child, track: _Track) -> str:
        now = self.clock()
        p = self.policy
        code = child.returncode
        reason = exit_reason(code)
        recent = [t for t in track.restarts if now - t < p.window_s]
        if len(recent) >= p.max_restarts:
            _log.error(
                "child_crash_loop",
                child=child.name,
                code=code,
                reason=reason,
                restarts=len(recent),
                within_s=p.window_s,
                action="giving up; see its log",
            )
            raise ChildFailed(
                f"{child.name} {reason} (exit {code}) after {len(recent)} restarts within "
                f"{p.window_s:.0f}s: a crash loop; its log:\n{child.log_tail()}"
            )
        backoff = min(p.max_backoff_s, p.first_backoff_s * 2 ** len(recent))
        track.due = now + backoff
        _log.warning(
            "child_exited",
            child=child.name,
            code=code,
            reason=reason,
            action=f"restarting in {backoff:.0f}s",
            log=child.log_path,
        )
        return f"{child.name} {reason} (exit {code}): restarting in {backoff:.0f}s"

    def _restart(self, child: Child, track: _Track) -> str:
        track.due = None
        track.restarts.append(self.clock())
        child.start()
        _log.info("child_restarted", child=child.name, pid=child.pid, restarts=len(track.restarts))
        return f"{child.name} started again (pid {child.pid}, restart {len(track.restarts)})"

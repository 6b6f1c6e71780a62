"""`iot ota push`: a bundle to boards over MQTT, a canary first, each board's outcome from its health.

Per board (`Transfer`): the offer is retained on its ota topic; chunks go from the offset the board
reports (`update_have`), at most two of its windows ahead; a stall (nothing new for STALL_S) or a
refused chunk sends again from there; the board's health then says `verifying`, `trial`, and how it
ended: `updated`, `refused` or `rolled_back` with the reason. When a board is done its offer is cleared.
A board already on the version is not offered it.

The rollout (`rollout`): the canary boards first, all at once; the rest only when every canary
updated and is online on the new version, `parallel` at a time. A board that rolls back or refuses in
the main wave is reported; the others go on.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from fleetops.bundle import Bundle
from fleetops.operator import Session, Target, chunk_topic, ota_topic
from iot import contract

__all__ = ["Outcome", "Transfer", "rollout"]

STALL_S = 5.0  # no progress reported for this long: send again from where the board is
AHEAD = 2 * contract.OTA_WINDOW_BYTES  # bytes in flight beyond the board's reported offset
OK = ("updated", "already")


@dataclass
class Outcome:
    device: str
    state: str  # updated | already | refused | rolled_back | timeout | skipped
    error: str = ""
    seconds: float = 0.0
    transfer_s: float = 0.0  # offer to the last byte acknowledged
    sent_bytes: int = 0
    resends: int = 0
    bad_chunks: int = 0

    @property
    def ok(self) -> bool:
        return self.state in OK


@dataclass
class Transfer:
    """One board's update: the bundle's chunks from where the board is, and its outcome."""

    session: Session
    target: Target
    bundle: Bundle
    push: int
    trial_s: int
    timeout_s: float
    say: Callable[[str], None]
    started: float = 0.0
    sent_end: int = 0
    last_have: int = -1
    progress_at: float = 0.0
    bad_seen: int = 0
    sent_bytes: int = 0
    resends: int = 0
    transfer_s: float = 0.0
    outcome: Outcome | None = None
    _shown: int = -1

    def __post_init__(self) -> None:
        self._ident = bytes.fromhex(self.bundle.id)

    def _done(self, state: str, error: str = "") -> Outcome:
        self.outcome = Outcome(
            self.target.device,
            state,
            error,
            time.monotonic() - self.started,
            self.transfer_s,
            self.sent_bytes,
            self.resends,
            self.bad_seen,
        )
        if state not in ("already", "skipped"):
            self.session.publish(ota_topic(self.target), b"", retain=True)  # the push is over
        return self.outcome

    def start(self) -> Outcome | None:
        self.started = self.progress_at = time.monotonic()
        health = self.session.heard(self.target.device).health or {}
        if health.get("fw") == self.bundle.version:
            self.say(f"{self.target.device}: already on {self.bundle.version}")
            return self._done("already")
        offer = {
            "id": self.bundle.id,
            "version": self.bundle.version,
            "size": self.bundle.size,
            "push": self.push,
            "trial_s": self.trial_s,
        }
        self.session.publish(ota_topic(self.target), json.dumps(offer).encode(), retain=True)
        self.say(f"{self.target.device}: offered {self.bundle.version} ({self.bundle.size} bytes)")
        return None

    def _send(self, start: int, end: int) -> None:
        topic = chunk_topic(self.target)
        data = self.bundle.data
        at = start
        while at < end:
            part = data[at : min(end, at + contract.OTA_CHUNK_BYTES)]
            head = self._ident + struct.pack(">II", at, zlib.crc32(part) & 0xFFFFFFFF)
            self.session.send(topic, head + part)
            at += len(part)
        self.sent_bytes += end - start

    def poll(self) -> Outcome | None:
        """Act on what the board said last; the outcome once it is over."""
        now = time.monotonic()
        if now - self.started > self.timeout_s:
            return self._done("timeout", f"no outcome within {self.timeout_s:.0f}s (offline, or stuck)")
        heard = self.session.heard(self.target.device)
        h = heard.health
        if h is None or heard.health_at < self.started or heard.health_retained:
            return None  # nothing from the board since the offer
        if h.get("update_id") != self.bundle.id:
            return None  # not this bundle yet: an older result, or the offer not taken yet
        state = h.get("update_state")
        error = str(h.get("update_error") or "")
        if state == "receiving":
            self._receiving(h, now)
        elif state == "verifying" and not self.transfer_s:
            self.transfer_s = now - self.started
        elif state == "trial":
            if not self.transfer_s:
                self.transfer_s = now - self.started
            if self._shown != -2:
                self._shown = -2
                self.say(f"{self.target.device}: running {self.bundle.version} on trial")
        elif state == "refused":
            self.say(f"{self.target.device}: REFUSED: {error}")
            return self._done("refused", error)
        elif state == "rolled_back":
            self.say(f"{self.target.device}: ROLLED BACK to {h.get('fw')}: {error}")
            return self._done("rolled_back", error)
        elif state == "updated" and h.get("fw") == self.bundle.version:
            self.say(f"{self.target.device}: updated to {self.bundle.version} in {now - self.started:.1f}s")
            return self._done("updated")
        return None

    def _receiving(self, h: dict[str, object], now: float) -> None:
        have = h.get("update_have")
        if not isinstance(have, int) or not 0 <= have <= self.bundle.size:
            return
        bad = h.get("update_bad_chunks")
        if isinstance(bad, int) and bad > self.bad_seen:
            self.bad_seen = bad
            self.sent_end = have  # a chunk arrived damaged: again from where the board is
            self.resends += 1
        if have != self.last_have:
            self.last_have = have
            self.progress_at = now
            quarter = 4 * have // self.bundle.size
            if quarter != self._shown and have:
                self._shown = quarter
                self.say(f"{self.target.device}: {have // 1024}/{self.bundle.size // 1024} KB")
        elif now - self.progress_at > STALL_S:
            self.sent_end = have  # lost chunks (or a reconnect): again from where the board is
            self.progress_at = now
            self.resends += 1
        self.sent_end = max(self.sent_end, have)
        if self.sent_end - have < contract.OTA_WINDOW_BYTES:
            end = min(self.bundle.size, have + AHEAD)
            if end > self.sent_end:
                self._send(self.sent_end, end)
                self.sent_end = end


def _wave(transfers: list[Transfer], parallel: int, on_done: Callable[[Outcome], None]) -> list[Outcome]:
    pending = list(transfers)
    active: list[Transfer] = []
    out: list[Outcome] = []
    while pending or active:
        while pending and len(active) < parallel:
            t = pending.pop(0)
            done = t.start()
            if done is not None:
                out.append(done)
                on_done(done)
            else:
                active.append(t)
        for t in list(active):
            done = t.poll()
            if done is not None:
                active.remove(t)
                out.append(done)
                on_done(done)
        if active:
            active[0].session.wait(0.05)
    return out


def rollout(
    session: Session,
    targets: list[Target],
    bundle: Bundle,
    canary: int = 0,
    parallel: int = 10,
    trial_s: int = 300,
    timeout_s: float = 900.0,
    say: Callable[[str], None] = print,
    on_done: Callable[[Outcome], None] = lambda _o: None,
) -> list[Outcome]:
    """Every target's outcome, in target order; `skipped` for boards not tried after a failed canary."""
    push = time.time_ns() // 1_000_000
    session.settle()

    def transfer(t: Target) -> Transfer:
        return Transfer(session, t, bundle, push, trial_s, timeout_s, say)

    canaries, rest = targets[:canary], targets[canary:]
    outcomes: dict[str, Outcome] = {}
    if canaries:
        say(f"canary: {', '.join(t.device for t in canaries)}")
        for o in _wave([transfer(t) for t in canaries], len(canaries), on_done):
            outcomes[o.device] = o
        bad = [o for o in outcomes.values() if not o.ok]
        unhealthy = [t.device for t in canaries if outcomes[t.device].ok and not _healthy(session, t, bundle)]
        if bad or unhealthy:
            why = "; ".join(f"{o.device} {o.state}: {o.error}" for o in bad)
            why += "".join(f"; {d} is not online on {bundle.version}" for d in unhealthy)
            say(f"canary failed ({why.lstrip('; ')}): the other {len(rest)} boards are not updated")
            for t in rest:
                outcomes[t.device] = Outcome(t.device, "skipped", "the canary failed")
            return [outcomes[t.device] for t in targets]
        say(f"canary healthy on {bundle.version}: {len(rest)} more boards, {parallel} at a time")
    for o in _wave([transfer(t) for t in rest], max(1, parallel), on_done):
        outcomes[o.device] = o
    return [outcomes[t.device] for t in targets]


def _healthy(session: Session, target: Target, bundle: Bundle) -> bool:
    heard = session.heard(target.device)
    return heard.status == contract.STATUS_ONLINE and (heard.health or {}).get("fw") == bundle.version

"""`iot config set | show`: a board's remote configuration, checked here by the firmware's own checker,
kept as the wanted state in the registry and delivered retained on the board's config topic.

The registry document's `config` is what the operator wants: `{"rev": N, "set": {...}, "trial_s": S,
"at": date, "sets": {"<rev>": {...}, ...}, "refused": {"rev": R, "error": "..."}}`; the board's health
says what it applied (`config_rev`) or why not (`config_error`). `sets` keeps the last `KEEP_SETS`
revisions sent, so that a revision the board refused is not built on: the next one starts from the
revision the board runs (docs/FLEET.md, "Remote configuration").
Wire: docs/CONTRACT.md, "Remote configuration"; the board's side: firmware/remote_config.py.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetops.errors import RolloutError
from fleetops.operator import Session, Target, config_topic
from hil import paths
from hil.flash import firmware_config_module
from iot import contract
from iot.devices.registry import UNREADABLE, Registry, RegistryError
from iot.errors import ConfigError

__all__ = [
    "LIVE",
    "NOT_REMOTE",
    "Delivery",
    "applied_rev",
    "base",
    "check",
    "deliver",
    "parse_pairs",
    "refusal",
    "wait_applied",
]

TRIAL_S = 120  # firmware/remote_config.py TRIAL_S
KEEP_SETS = 8  # revisions whose fields the registry keeps: what a board may still run
_SECRET = ("password", "secret", "key")


def _firmware_tuple(name: str) -> tuple[str, ...]:
    """A tuple constant of firmware/remote_config.py, read from its source (it imports board modules)."""
    tree = ast.parse((paths.FIRMWARE / "remote_config.py").read_text())
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        if name in [t.id for t in node.targets if isinstance(t, ast.Name)]:
            value = ast.literal_eval(node.value)
            if isinstance(value, tuple):
                return tuple(str(v) for v in value)
    raise RuntimeError(f"firmware/remote_config.py has no tuple {name}")


NOT_REMOTE = _firmware_tuple("NOT_REMOTE")
LIVE = _firmware_tuple("LIVE")


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """key=value arguments; a value is JSON when it parses as JSON (5, 0.5, true, {"temperature": 0.2}),
    else the text (mqtt://host:1883)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(pair, "write it as field=value, e.g. interval_s=5")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def check(target: Target, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The effective config `wanted` gives a board (over the firmware's defaults), checked by the
    firmware's own checker; ConfigError names the field and why."""
    fw = firmware_config_module()
    for key in wanted:
        if key in NOT_REMOTE:
            raise ConfigError(
                key,
                "cannot be set remotely: it belongs to the board's broker account "
                "(iot devices add, then iot flash)",
            )
    try:
        cfg: dict[str, Any] = fw.validate({"device": target.device, "place": target.place, **wanted})
    except fw.ConfigError as exc:
        raise ConfigError(str(exc.field), f"{exc.problem} (the firmware's own check)") from None
    return cfg


def masked(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(s in k for s in _SECRET) and v else v) for k, v in values.items()}


@dataclass(frozen=True)
class Delivery:
    target: Target
    rev: int
    wanted: dict[str, Any]
    restart: bool  # some field needs the board to restart (on trial)
    # When the last revision sent was refused: its fields this one leaves out, and why it was refused.
    dropped: dict[str, Any] = field(default_factory=dict)
    refused: str = ""


def base(
    config: Mapping[str, Any], health: Mapping[str, Any] | None, applied_rev: int | None
) -> dict[str, Any]:
    """The fields a new revision starts from: the last revision sent, unless the board refused it
    (its health says so, or the registry recorded it): then the revision the board runs
    (`applied_rev`, from its health or the registry; 0: its config.json alone). A board that refused
    a broker it could not reach is not sent that broker again with the next change."""
    last = dict(config.get("set") or {})
    rev = int(config.get("rev") or 0)
    refused = outcome(health, rev)[0] == "refused" or (config.get("refused") or {}).get("rev") == rev
    if not rev or not refused or applied_rev is None:
        return last
    if applied_rev == 0:
        return {}
    kept = (config.get("sets") or {}).get(str(applied_rev))
    return dict(kept) if isinstance(kept, Mapping) else last  # not on record: as before


def applied_rev(doc: Mapping[str, Any], health: Mapping[str, Any] | None) -> int | None:
    """The revision a board runs: its health's `config_rev`, else the registry's copy of it."""
    applied = health.get(contract.HEALTH_CONFIG_REV) if health else doc.get(contract.HEALTH_CONFIG_REV)
    return applied if isinstance(applied, int) and not isinstance(applied, bool) else None


def refusal(config: Mapping[str, Any], health: Mapping[str, Any] | None) -> str:
    """Why the board refused the last revision sent (its health, else the registry), '' if it did not."""
    rev = int(config.get("rev") or 0)
    state, detail = outcome(health, rev)
    if state == "refused":
        return detail
    recorded = config.get("refused") or {}
    return str(recorded.get("error") or "") if rev and recorded.get("rev") == rev else ""


def deliver(
    session: Session,
    registry: Registry,
    targets: list[Target],
    changes: Mapping[str, Any],
    unset: list[str],
    trial_s: int = TRIAL_S,
) -> list[Delivery]:
    """For each board: the new wanted config (its last one, or the one it runs if it refused the last,
    with `changes`, without `unset`), checked (every board before any is sent to), published retained,
    then recorded in the registry."""
    if not 10 <= trial_s <= 3600:
        raise ConfigError("--trial", f"must be 10..3600 seconds, got {trial_s}")
    planned: list[tuple[Delivery, dict[str, Any]]] = []
    for t in targets:
        doc = registry.get(t.device) or {}
        if doc.get(UNREADABLE):
            # Its next revision and the fields it keeps cannot be known: guessing could send a revision
            # the board ignores (not above its own) or drop fields it runs.
            raise RolloutError(
                f"{t.device}: its wanted config is unreadable ({doc[UNREADABLE]}); nothing was sent to"
                " any board. Repair that document, or delete it: the next `iot config set` then starts"
                " after the revision the board runs, with only the fields it gives"
            )
        old = doc.get("config") or {}
        health = session.heard(t.device).health
        start = base(old, health, applied_rev(doc, health))
        last = dict(old.get("set") or {})
        wanted = {k: v for k, v in start.items() if k not in unset}
        wanted.update(changes)
        check(t, wanted)
        restart = any(k not in LIVE for k in wanted)
        # What the refused revision had that this one does not, unless the operator says so now.
        gone = object()
        dropped = {
            k: v for k, v in last.items() if start.get(k, gone) != v and k not in changes and k not in unset
        }
        # Above the revision the board runs too: one it has (or had) is not taken again.
        rev = max(int(old.get("rev") or 0), applied_rev(doc, health) or 0) + 1
        sets = {str(r): v for r, v in dict(old.get("sets") or {}).items() if int(r) > rev - KEEP_SETS}
        sets[str(rev)] = wanted
        planned.append((Delivery(t, rev, wanted, restart, dropped, refusal(old, health)), sets))
    for d, sets in planned:
        message = {"rev": d.rev, "set": d.wanted, "trial_s": trial_s}
        session.publish(config_topic(d.target), json.dumps(message).encode(), retain=True)
        try:
            registry.set_config(d.target.device, {**message, "at": dt.datetime.now(dt.UTC), "sets": sets})
        except RegistryError as exc:
            raise RolloutError(
                f"{d.target.device}: rev {d.rev} was sent but not recorded ({exc}); run the same command "
                "again once MongoDB answers"
            ) from None
    return [d for d, _sets in planned]


def outcome(health: Mapping[str, Any] | None, rev: int) -> tuple[str, str]:
    """('applied' | 'trial' | 'refused' | '', detail) of revision `rev` from a board's health."""
    if not health:
        return "", ""
    error = str(health.get("config_error") or "")
    if health.get("config_rev") == rev:
        return "applied", ""
    if error.startswith(f"rev {rev}:"):
        return "refused", error
    if health.get("config_trial") == rev:
        return "trial", ""
    return "", ""


def wait_applied(
    session: Session,
    deliveries: list[Delivery],
    timeout_s: float,
    say: Callable[[str], None],
    registry: Registry | None = None,
) -> dict[str, tuple[str, str]]:
    """Each board's outcome for its revision as its health reports it, until all are final or timeout;
    refusals recorded in `registry` (the next revision then starts from what the board runs)."""
    deadline = time.monotonic() + timeout_s
    result: dict[str, tuple[str, str]] = {}
    trial_said: set[str] = set()
    while True:
        for d in deliveries:
            if d.target.device in result:
                continue
            state, detail = outcome(session.heard(d.target.device).health, d.rev)
            if state in ("applied", "refused"):
                result[d.target.device] = (state, detail)
                if state == "refused" and registry is not None:
                    registry.note_config_refused(d.target.device, d.rev, detail)
                say(f"{d.target.device}: rev {d.rev} {state}" + (f": {detail}" if detail else ""))
            elif state == "trial" and d.target.device not in trial_said:
                trial_said.add(d.target.device)
                say(f"{d.target.device}: rev {d.rev} on trial (it restarted with it)")
        left = deadline - time.monotonic()
        if len(result) == len(deliveries) or left <= 0:
            break
        session.wait(min(left, 0.5))
    for d in deliveries:
        result.setdefault(d.target.device, ("pending", f"no answer within {timeout_s:.0f}s"))
    return result

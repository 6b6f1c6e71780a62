"""Remote configuration, the board's side: the operator's config, validated, persisted, applied.

Message (sensors/{place}/{device}/config, retained, QoS 1): {"rev": N, "set": {field: value, ...},
"trial_s": S}:
everything the operator sets over config.json (the whole of it, not a change to the last one), N > 0
and rising. The board checks it with config.py against its own config.json (the host did too, against
defaults), refuses a bad one with the field and why, and otherwise:
- when every field that changes is LIVE, applies it at once (node.apply_config) and keeps it in
  remote.json;
- else (the broker, Wi-Fi, pins, watchdog, ...) keeps it in remote.try and restarts with it: that
  boot must get the link up within the message's `trial_s` (default 120), or the board goes back to
  the config it had and says why (`config_error`). A restart during the trial also goes back, so a
  config that crashes or hangs the board cannot keep it away.
Health reports the revision in use (`config_rev`) and the last refusal (`config_error`). The retained
message comes again at every connect: a revision applied, on trial or refused is not taken again.
"""

import json

import config
import log
from fleet import read_json, remove, write_json

FILE = "remote.json"  # {"rev", "set", "refused", "error"}: what is applied, and the last refusal
TRY = "remote.try"  # {"rev", "set", "boots"}: a config on trial
# Applied without a restart: the node and the link read them again (node.apply_config).
LIVE = ("interval_s", "health_every_s", "offsets", "ack_timeout_s", "ack_timeout_max_s", "ntp_every_s",
        "ntp_host")
# Fields a remote config may not set: the board's identity and login belong to its broker account
# (`iot devices add`), which a config message cannot move. fleetops/remote.py reads both tuples.
NOT_REMOTE = ("device", "place", "mqtt_user", "mqtt_password")
TRIAL_S = 120  # how long a config that needs a restart has to get the link up (the message's trial_s)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from node import Node


def effective(changes: object) -> dict:
    """The config a remote config gives: its fields over config.json, checked as a whole by config.py
    (the host's `iot config set` checks the same way, fleetops/remote.py)."""
    if not isinstance(changes, dict):
        raise config.ConfigError("(set)", "must be an object of field -> value")
    for key in changes:
        if key in NOT_REMOTE:
            raise config.ConfigError(str(key), "cannot be set remotely: it belongs to the board's broker "
                                     "account (iot devices add, then iot flash)")
    return config.load(config.FILE, changes)


class Remote:
    def __init__(self) -> None:
        saved = read_json(FILE)
        self.rev = saved.get("rev", 0)
        self.set = saved.get("set", {})
        self.refused = saved.get("refused", 0)
        self.error = saved.get("error", "")
        self.trial: dict | None = None
        self.report = False

    def _save(self) -> None:
        write_json(FILE, {"rev": self.rev, "set": self.set, "refused": self.refused, "error": self.error})

    def _refuse(self, rev: int, why: str) -> None:
        self.refused = rev
        self.error = "rev %d: %s; %s stays" % (rev, why, "rev %d" % self.rev if self.rev else "config.json")
        self._save()
        self.report = True
        log.event("config_refused", rev=rev, why=why, kept=self.rev)

    def boot(self, base: dict) -> dict:
        """The config this boot runs with: config.json (`base`) with the applied or tried fields."""
        t = read_json(TRY)
        if t:
            if t.get("boots", 0) >= 1:
                remove(TRY)
                self._refuse(t.get("rev", 0), "the board restarted before it was back online with it")
            else:
                t["boots"] = 1
                write_json(TRY, t)
                self.trial = t
        chosen = self.trial["set"] if self.trial is not None else self.set
        try:
            cfg = effective(chosen)
        except config.ConfigError as exc:
            # A stored config this firmware no longer takes (an update made a check stricter).
            rev = self.trial["rev"] if self.trial is not None else self.rev
            if self.trial is not None:
                remove(TRY)
                self.trial = None
            else:
                self.rev, self.set = 0, {}
            self._refuse(rev, exc.field + ": " + exc.problem)
            return base
        if self.trial is not None:
            log.event("config_trial", rev=self.trial["rev"], within_s=self.trial["trial_s"])
        return cfg

    def handle(self, node: Node, payload: memoryview) -> str:
        """A config message: '' (ignored, refused or applied live) or 'restart' (on trial)."""
        try:
            msg = json.loads(bytes(payload)) if len(payload) else None
            if msg is None:
                return ""  # the operator cleared it: the board keeps what it has
            rev, changes, trial_s = msg["rev"], msg["set"], msg.get("trial_s", TRIAL_S)
            if not isinstance(rev, int) or isinstance(rev, bool) or rev < 1:
                raise ValueError("rev")
            if not isinstance(trial_s, int) or not 10 <= trial_s <= 3600:
                raise ValueError("trial_s: 10..3600")
        except (ValueError, KeyError, TypeError) as exc:
            log.event("config_message_invalid", error=exc, action='ignored; send {"rev": N, "set": {...}}')
            return ""
        if rev <= self.rev or rev == self.refused or (self.trial is not None and rev == self.trial["rev"]):
            return ""
        try:
            new = effective(changes)
        except config.ConfigError as exc:
            self._refuse(rev, exc.field + ": " + exc.problem)
            return ""
        cfg = node.cfg
        restart = [k for k in new if new[k] != cfg[k] and k not in LIVE]
        if not restart:
            node.fleet.apply_config(new)  # type: ignore[union-attr]
            self.rev, self.set, self.error = rev, changes, ""
            self._save()
            self.report = True
            log.event("config_applied", rev=rev, restart=False)
            return ""
        write_json(TRY, {"rev": rev, "set": changes, "boots": 0, "trial_s": trial_s})
        log.event("config_applied", rev=rev, restart=True, fields=",".join(restart),
                  action="restarting; back to rev %d unless online within %d s" % (self.rev, trial_s))
        return "restart"

    def step(self, node: Node) -> str:
        """On trial: commit once the link is up, go back (restart) when its trial_s ran out."""
        t = self.trial
        if t is None:
            return ""
        if node.link.up:
            self.rev, self.set, self.error = t["rev"], t["set"], ""
            self._save()
            remove(TRY)
            self.trial = None
            self.report = True
            log.event("config_committed", rev=self.rev)
            return ""
        limit = t.get("trial_s", TRIAL_S)
        if node.uptime_ms < limit * 1000:
            return ""
        remove(TRY)
        self.trial = None
        self._refuse(t["rev"], "not online within %d s with it (broker %s)" % (limit, node.cfg["broker"]))
        return "restart"

    def fields(self, out: dict) -> None:
        out["config_rev"] = self.rev
        if self.trial is not None:
            out["config_trial"] = self.trial["rev"]
        if self.error:
            out["config_error"] = self.error

"""The operator's hand on a board: remote configuration (remote_config.py) and over-the-air updates
(ota.py), driven from the node's loop; and the new version's trial after an update.

Loaded only when in use: at boot when the flash holds a remote config or an update's state, else when
the first config or update message arrives. ota.py (with otaboot.py ~19 KB of heap once loaded) loads
only for a transfer: a version on trial is judged here, so its first boots run on the heap they will
always have. A module that does not fit the heap (sources compiled on a board: flash the firmware
compiled, `iot flash --mpy`) refuses what needed it and says so; it never crashes the node.
"""

import gc
import json
import os
import sys

import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from node import Node
    from ota import Updater
    from remote_config import Remote

# The update's files (otaboot.py names them too: it imports nothing that an update replaces).
DIR = "ota.d"
NEW = DIR + "/new"
PREV = DIR + "/prev"
STATE = DIR + "/state"
RESULT = DIR + "/result"  # an update's outcome, until a health message said it (then LAST)
LAST = DIR + "/last"
OFFER = DIR + "/offer"
HEADER = DIR + "/hdr"
TRIAL_S = 300  # an offer without its own trial_s


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)  # atomic on littlefs


def remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class Fleet:
    def __init__(self, node: Node, remote: Remote | None) -> None:
        self.node = node
        self.remote = remote
        self.ota: Updater | None = None
        self._restart_for = ""
        self.report = False
        st = read_json(STATE)
        self.trial = st if st.get("s") == "trial" else None
        self.last = read_json(RESULT)  # an outcome this boot reports (then archived, see step)
        self._archive = bool(self.last)
        self.unavailable = ""  # why an update could not even be received (no heap for ota.py)
        self.remote_fields: dict = {}  # what health says of a remote config unloaded for ota.py
        # A transfer to resume: from the loop's first step, not from here (the caller's frame still
        # holds the remote config, whose heap ota.py may need).
        try:
            os.stat(OFFER)
            self._resume = True
        except OSError:
            self._resume = False
        self._unload_remote()  # an idle remote config: health keeps its fields

    def _unload_remote(self) -> None:
        """An idle remote config (none on trial) leaves what health says of it and goes, with
        config.py (remote_config.py ~4.5 KB + config.py ~11.5 KB of heap, measured on the unix port):
        the next config message loads both again from remote.json. On a board configured remotely
        an update's transfer dropped every chunk while they stayed."""
        r = self.remote
        if r is None or r.trial is not None:
            return
        out: dict = {}
        r.fields(out)
        self.remote_fields = out
        self.report = self.report or r.report
        self.remote = None
        sys.modules.pop("remote_config", None)
        sys.modules.pop("config", None)  # loaded for remote_config.py only (node.main let it go)

    def updater(self) -> Updater | None:
        if self.ota is None and not self.unavailable:
            self._unload_remote()
            gc.collect()
            try:
                from ota import Updater

                self.ota = Updater(self.node.board, self.node.fw)
            except MemoryError:
                gc.collect()
                self.unavailable = ("no heap to load ota.py (%d bytes free): flash the firmware compiled "
                                    "(iot flash --mpy) to take updates" % gc.mem_free())
                log.event("ota_unavailable", why=self.unavailable)
        return self.ota

    def message(self, kind: bytes, payload: memoryview) -> None:
        """A config or update message, from inside the link's read: nothing is published from here,
        a restart waits for the loop (step)."""
        if kind == b"config":
            if self.remote is None:
                gc.collect()
                try:
                    from remote_config import Remote
                except MemoryError:
                    log.event("config_unavailable", why="no heap to load remote_config.py",
                              action="flash the firmware compiled (iot flash --mpy)")
                    return
                self.remote = Remote()
                self.remote_fields = {}
            if self.remote.handle(self.node, payload):
                self._restart_for = "config"
            else:
                self._unload_remote()  # applied, refused or the same again (the retained one): idle
        elif kind == b"ota":
            if self.trial is not None:
                return  # a version on trial takes no offer: it is judged first
            updater = self.updater()
            if updater is not None:
                updater.on_offer(payload)
            elif len(payload):
                self._refuse_offer(payload)
        elif kind == b"ota/chunk" and self.ota is not None:
            self.ota.on_chunk(payload)

    def _refuse_offer(self, payload: memoryview) -> None:
        try:
            o = json.loads(bytes(payload))
            self.last = {"state": "refused", "id": o["id"], "version": o["version"],
                         "error": self.unavailable}
        except (ValueError, KeyError, TypeError):
            return
        self.report = True

    def apply_config(self, cfg: dict) -> None:
        """A remote config whose changes all take effect without a restart (remote_config.LIVE)."""
        node = self.node
        node.cfg = cfg
        node.interval_ms = max(1, int(cfg["interval_s"] * 1000))
        node.set_ack_timeout(cfg)
        node.next_health = node.uptime_ms + int(cfg["health_every_s"] * 1000)

    # --- the loop ----------------------------------------------------------------------------
    def step(self) -> None:
        """Restart when a config or an update asks for it; judge a trial; report progress in health."""
        node = self.node
        if self._resume:
            self._resume = False
            self.updater()
        why = self._restart_for
        remote, ota = self.remote, self.ota
        if remote is not None and remote.step(node):
            why = "config"
        if ota is not None and ota.step():
            why = "update_install"
        if self.trial is not None:
            why = self._judge() or why
        if why:
            self.restart(why)
        if self._archive and node.link.up and not node.link.just_connected:
            # The node's first health of this session said it: the registry keeps it from here, and
            # the next boot need not load this module for it.
            self._archive = False
            os.rename(RESULT, LAST)
        if (self.report or (remote is not None and remote.report) or (ota is not None and ota.report)) \
                and node.link.up:
            self.report = False
            if remote is not None:
                remote.report = False
            if ota is not None:
                ota.report = False
            node.link.publish_health(node.health())

    def _judge(self) -> str:
        """The new version's trial: committed once the link is up and a reading was acknowledged end
        to end; after trial_s without, the journal says roll back and the node restarts."""
        node, st = self.node, self.trial
        assert st is not None
        if node.link.up and node.acks > 0:
            try:
                for name in os.listdir(PREV):
                    os.remove(PREV + "/" + name)
            except OSError:
                pass
            self.last = {"state": "updated", "id": st.get("id", ""), "version": st.get("version", ""),
                         "from": st.get("from", ""), "error": "", "push": st.get("push", 0)}
            write_json(RESULT, self.last)
            os.remove(STATE)
            self._archive = True
            self.trial = None
            self.report = True
            log.event("ota_committed", version=self.last["version"], previous=self.last["from"])
            return ""
        limit = st.get("trial_s", TRIAL_S)
        if node.uptime_ms < limit * 1000:
            return ""
        st["s"] = "rollback"
        st["why"] = "no reading acknowledged end to end within %d s" % limit
        write_json(STATE, st)
        log.event("ota_trial_failed", version=st.get("version"), why=st["why"])
        return "update_rollback"

    def restart(self, why: str) -> None:
        """A planned reset: RAM readings to flash first (nothing lost; the next boot numbers its
        readings from a new boot), an update's journal, a clean goodbye to the broker, the reset."""
        node = self.node
        log.event("node_restarting", reason=why, boot=node.boot, next_seq=node.seq,
                  outbox_depth=node.outbox.count)
        node.outbox.spill()
        if why == "update_install" and self.ota is not None:
            self.ota.install()
        node.link.close()
        node.board.reset()

    def fields(self, h: dict) -> None:
        if self.remote is not None:
            self.remote.fields(h)
        else:
            h.update(self.remote_fields)
        if self.ota is not None:
            self.ota.fields(h)
            return
        st = self.trial
        if st is not None:
            h["update_state"] = "trial"
            h["update_version"] = st.get("version", "")
            h["update_id"] = st.get("id", "")
            return
        last = self.last
        if last:
            h["update_state"] = last.get("state", "")
            h["update_version"] = last.get("version", "")
            h["update_id"] = last.get("id", "")
            if last.get("error"):
                h["update_error"] = last["error"]

"""The update journal, run by boot.py before main.py: finish a swap, count trial boots, roll back.

An update (ota.py) stages and verifies every file of the new version in ota.d/new/, writes the
journal `ota.d/state` {"s": "swap", ...} and resets. Everything that touches the running firmware
happens here, at the next boot, before any firmware module is imported:

- swap: the old firmware files move to ota.d/prev/, the new ones from ota.d/new/ into place, main.py
  last; then the state becomes "trial". Every step is one rename (atomic on littlefs) and the walk
  can restart at any point: a file still in new/ is not swapped yet, so a power cut during the swap
  is finished at the next boot (every new file was verified before the journal was written);
- trial: the new version must come online and get readings acknowledged end to end (ota.py commits
  it: prev/ deleted, the journal removed). A boot that finds the trial still open counts it: after a
  crash (crash.txt left by the crash handler), a watchdog reset or TRIAL_BOOTS boots without a
  commit the state becomes "rollback";
- rollback: files that came with the new version are deleted, the old ones move back from prev/,
  main.py last; restartable the same way. ota.d/result keeps why, for the next health message.

Not part of any update bundle (neither is boot.py): the code that recovers a bad update is the one
an update cannot break, so it imports no firmware module (its log lines are log.py's format, printed).
`iot flash` puts both on a board. Power cuts at every step are tested on the unix port
(tests/firmware/test_otaboot.py).
"""

import json
import os

DIR = "ota.d"  # not "ota": a directory named like a module shadows ota.py on import
NEW = DIR + "/new"
PREV = DIR + "/prev"
STATE = DIR + "/state"
RESULT = DIR + "/result"
CRASH_FILE = "crash.txt"  # node.py's crash record
TRIAL_BOOTS = 2  # boots of a new version without a commit before it is rolled back (a power cut: 1 more)
TRIAL_WATCHDOG_MS = 60000  # armed at a trial boot: a new main.py that stops at the REPL is reset


def exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def read_json(path: str) -> object:
    """The JSON in `path`; None when it is missing or not JSON (written by a firmware that broke)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, obj: object) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)  # atomic on littlefs: the old journal or the new, never half


def remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass  # already gone: a step repeated after a power cut


def firmware_files() -> list:
    """The firmware in the root of the flash: every .py and .mpy but the boot files."""
    out = []
    for name in os.listdir():
        if (name.endswith(".py") or name.endswith(".mpy")) and name not in ("boot.py", "otaboot.py",
                                                                               "otaboot.mpy"):
            out.append(name)
    return out


def swap(st: dict) -> None:
    """Old firmware to prev/, new from new/ into place (st["files"] ends with main.py)."""
    for name in st["removed"]:
        if exists(name):
            os.rename(name, PREV + "/" + name)
    for name in st["files"]:
        staged = NEW + "/" + name
        if not exists(staged):
            continue  # swapped before a power cut
        if exists(name):
            os.rename(name, PREV + "/" + name)  # still the old one: new/ holds its successor
        os.rename(staged, name)


def rollback(st: dict) -> None:
    """Undo a swap: what the update added goes, the old files come back from prev/, main.py last."""
    added = st["added"]
    for name in st["removed"] + st["files"]:
        if name in added:
            remove(name)
            continue
        saved = PREV + "/" + name
        if exists(saved):
            remove(name)  # the new version's copy; a rename over it would do on littlefs, not on FAT
            os.rename(saved, name)


def _trial_failed(st: dict, board: object) -> str:
    """Why the open trial failed, or "" when this boot may try again."""
    if st.get("boots", 0) < 1:
        return ""
    try:
        with open(CRASH_FILE) as f:
            crash = f.read()
    except OSError:
        crash = ""
    if crash:
        lines = crash.strip().split("\n")
        return "crashed: " + lines[-1][:120]
    cause = board.reset_cause()  # type: ignore[attr-defined]
    if cause == "watchdog":
        return "watchdog reset"
    if st["boots"] >= TRIAL_BOOTS:
        return "no commit after %d boots (last reset: %s)" % (st["boots"], cause)
    return ""


def _load_firmware(files: list) -> str:
    """Import what main.py imports, in its order; "" when it loads, else why. What the attempt loaded
    of the firmware (board, the update's `files`, what mqtt and node brought) is dropped, so main.py
    then loads the old version cleanly once rolled back; what board.py brought of the port stays, as
    the port's own modules stay loaded on an ESP32 (the virtual boards' layer: compiled again on a
    heap the failed attempt had cut up, it found no room and the board stopped at the REPL). Checked
    here, at a trial boot, so neither main.py nor the board layer has to survive a new version that
    does not load."""
    import gc
    import sys

    before = set(sys.modules)
    port: set = set()
    try:
        import board  # noqa: F401

        port = set(sys.modules) - before
        port.discard("board")
        for name in files:
            port.discard(name.rsplit(".", 1)[0])
        gc.collect()
        import mqtt  # noqa: F401

        gc.collect()
        import node  # noqa: F401
    except Exception as exc:
        for name in list(sys.modules):
            if name not in before and name not in port:
                del sys.modules[name]
        gc.collect()
        with open(CRASH_FILE, "w") as f:
            sys.print_exception(exc, f)  # type: ignore[attr-defined]
        sys.print_exception(exc)  # type: ignore[attr-defined]
        return "crashed at import: %s: %s" % (type(exc).__name__, exc)
    return ""


def _finish(st: dict, state: str, why: str) -> None:
    write_json(RESULT, {"state": state, "id": st.get("id", ""), "version": st.get("version", ""),
                        "from": st.get("from", ""), "error": why, "push": st.get("push", 0)})
    os.remove(STATE)


def run() -> None:
    st = read_json(STATE)
    if not isinstance(st, dict) or st.get("s") not in ("swap", "trial", "rollback"):
        if not exists(STATE):
            return
        print("ota_journal_invalid action=\"removed; the running firmware stays\"")
        remove(STATE)
        return
    if st["s"] == "swap":
        print("ota_swap version=%s files=%d" % (st.get("version"), len(st["files"])))
        swap(st)
        st["s"] = "trial"
        st["boots"] = 0
        write_json(STATE, st)
    if st["s"] == "trial":
        why = _load_firmware(st.get("files", []))
        if not why:
            from board import load

            board = load()
            why = _trial_failed(st, board)
        if not why:
            st["boots"] = st.get("boots", 0) + 1
            write_json(STATE, st)
            print("ota_trial version=%s boot=%d of=%d" % (st.get("version"), st["boots"], TRIAL_BOOTS))
            board.watchdog(TRIAL_WATCHDOG_MS)
            return
        st["s"] = "rollback"
        st["why"] = why
        write_json(STATE, st)
    print("ota_rollback version=%s back_to=%s why=\"%s\""
          % (st.get("version"), st.get("from"), st.get("why")))
    rollback(st)
    _finish(st, "rolled_back", st.get("why", ""))


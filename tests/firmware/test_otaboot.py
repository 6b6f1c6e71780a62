"""The update journal (firmware/otaboot.py) on the unix port: a power cut at every flash operation of
a swap and of a rollback, and a second cut at every operation of the boot that finishes it, leaves a
flash that boots one whole version; trial boots are counted and a failed trial is rolled back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit

# The board layer as otaboot sees it: the reset cause and the watchdog (vboard needs a whole spec);
# `port` stands for what board.py imports of the port (the virtual board layer, C modules on an ESP32).
_BOARD = """
import port  # noqa: F401
CAUSE = ["power_on"]
class _Board:
    armed = 0
    def reset_cause(self):
        return CAUSE[0]
    def watchdog(self, ms):
        self.armed = ms
_b = _Board()
def load():
    return _b
"""

# Every rename and remove is a flash operation; `budget` of them succeed, then the power goes.
_HARNESS = r"""
import json, sys
import os as _os

class Cut(Exception):
    pass

class Flash:
    budget = -1
    ops = 0
    def __getattr__(self, name):
        return getattr(_os, name)
    def _op(self):
        Flash.ops += 1
        if Flash.budget == 0:
            raise Cut()
        if Flash.budget > 0:
            Flash.budget -= 1
    def rename(self, a, b):
        self._op()
        _os.rename(a, b)
    def remove(self, p):
        self._op()
        _os.remove(p)

sys.modules["os"] = Flash()
import board
import otaboot

OLD = {"a.py": "old a", "main.py": "old main", "gone.py": "old gone"}
NEW = {"a.py": "new a", "b.mpy": "new b", "main.py": "new main"}
STATE = {"s": "swap", "id": "0123456789abcdef", "version": "2.0.0", "from": "1.0.0",
         "files": ["a.py", "b.mpy", "main.py"], "added": ["b.mpy"], "removed": ["gone.py"]}
ROOT = _os.getcwd()
n = [0]

def write(path, text):
    with open(path, "w") as f:
        f.write(text)

def fresh():
    n[0] += 1
    _os.chdir(ROOT)
    d = "case%d" % n[0]
    _os.mkdir(d)
    _os.chdir(d)
    write("boot.py", "boot")
    write("config.json", "{}")
    _os.mkdir("ota.d")
    _os.mkdir("ota.d/new")
    _os.mkdir("ota.d/prev")

def swapped_layout():
    fresh()
    for k in OLD:
        write(k, OLD[k])
    for k in NEW:
        write("ota.d/new/" + k, NEW[k])
    write("ota.d/state", json.dumps(STATE))

def trial_layout(boots):
    fresh()
    for k in NEW:
        write(k, NEW[k])
    for k in OLD:
        write("ota.d/prev/" + k, OLD[k])
    st = dict(STATE)
    st["s"] = "trial"
    st["boots"] = boots
    write("ota.d/state", json.dumps(st))

def firmware():
    out = {}
    for name in _os.listdir():
        if name.endswith(".py") or name.endswith(".mpy"):
            with open(name) as f:
                out[name] = f.read()
    out.pop("boot.py")
    return out

def state():
    try:
        with open("ota.d/state") as f:
            return json.load(f)
    except OSError:
        return None

def result():
    try:
        with open("ota.d/result") as f:
            return json.load(f)
    except OSError:
        return None

def boot(budget):
    Flash.budget = budget
    try:
        otaboot.run()
        return True
    except Cut:
        return False
    finally:
        Flash.budget = -1

def ops_of(layout, *args):
    layout(*args)
    Flash.ops = 0
    boot(-1)
    return Flash.ops
"""


# What main.py imports, as a trial boot loads it first: a node.py that raises when its case says so.
_NODE = """
import os
try:
    os.stat("broken")
except OSError:
    pass
else:
    raise RuntimeError("broken build")
"""


def _run(code: str, tmp_path: Path) -> Any:
    (tmp_path / "board.py").write_text(_BOARD)
    (tmp_path / "mqtt.py").write_text("")
    (tmp_path / "port.py").write_text("")
    (tmp_path / "node.py").write_text(_NODE)
    return unixport.run_json(_HARNESS + code, tmp_path, heap="2M", timeout=300)


def test_a_power_cut_anywhere_in_a_swap_or_in_the_boot_after_it_leaves_the_whole_new_version(
    tmp_path: Path,
) -> None:
    out = _run(
        r"""
N = ops_of(swapped_layout)
bad = []
for first in range(N):
    for second in range(N + 1):
        swapped_layout()
        boot(first)          # the power goes after `first` operations
        boot(second)         # ... and again in the next boot
        boot(-1)             # the boot after that runs to its end
        fw = firmware()
        st = state()
        if fw != NEW or st is None or st["s"] != "trial" or st["boots"] < 1:
            bad.append([first, second, fw, st])
        for k in OLD:        # the old version is kept whole for a rollback
            with open("ota.d/prev/" + k) as f:
                if f.read() != OLD[k]:
                    bad.append([first, second, "prev " + k])
print(json.dumps({"ops": N, "bad": bad[:3], "cases": N * (N + 1)}))
""",
        tmp_path,
    )
    assert out["ops"] >= 8  # 1 removed + 3 swapped (5 renames) + the journal twice
    assert out["bad"] == [], out


def test_a_power_cut_anywhere_in_a_rollback_or_in_the_boot_after_it_leaves_the_whole_old_version(
    tmp_path: Path,
) -> None:
    out = _run(
        r"""
N = ops_of(trial_layout, 2)
bad = []
for first in range(N):
    for second in range(N + 1):
        trial_layout(2)      # two boots without a commit: this one rolls back
        boot(first)
        boot(second)
        boot(-1)
        fw = firmware()
        r = result()
        if fw != OLD or state() is not None or r is None or r["state"] != "rolled_back":
            bad.append([first, second, fw, state(), r])
print(json.dumps({"ops": N, "bad": bad[:3], "cases": N * (N + 1)}))
""",
        tmp_path,
    )
    assert out["ops"] >= 6
    assert out["bad"] == [], out


def test_trial_boots_are_counted_and_a_crash_or_a_watchdog_reset_rolls_back_at_once(tmp_path: Path) -> None:
    out = _run(
        r"""
res = {}
trial_layout(0)              # the first boot of the new version: a trial boot, watchdog armed
boot(-1)
res["first"] = [state()["s"], state()["boots"], board.load().armed, firmware() == NEW]
trial_layout(1)              # a power cut during the first: one more try
boot(-1)
res["power_cut"] = [state()["s"], state()["boots"], firmware() == NEW]
trial_layout(1)
write("crash.txt", "Traceback (most recent call last):\n  File ...\nValueError: broken build\n")
boot(-1)
res["crash"] = [result()["error"], firmware() == OLD]
trial_layout(1)
board.CAUSE[0] = "watchdog"
boot(-1)
res["watchdog"] = [result()["error"], firmware() == OLD]
board.CAUSE[0] = "power_on"
trial_layout(2)
boot(-1)
res["twice"] = [result()["error"], result()["version"], result()["from"], firmware() == OLD]
trial_layout(0)              # the new version does not even load: rolled back at its first boot
write("broken", "")
sys.modules.pop("node", None)  # a new interpreter at every boot on a board
boot(-1)
res["import"] = [result()["error"], firmware() == OLD, "node" in sys.modules, "board" in sys.modules]
trial_layout(0)              # the same at a board's boot, where board.py is not loaded yet
write("broken", "")
_board = sys.modules.pop("board")
sys.modules.pop("port")
sys.modules.pop("mqtt", None)
sys.modules.pop("node", None)
boot(-1)
res["fresh"] = [result()["error"], [n in sys.modules for n in ("board", "mqtt", "node", "port")]]
sys.modules["board"] = _board
fresh()
write("ota.d/state", "{not json")
write("main.py", "old main")
boot(-1)
res["garbage"] = [state(), firmware()]
print(json.dumps(res))
""",
        tmp_path,
    )
    assert out["first"] == ["trial", 1, 60000, True]
    assert out["power_cut"] == ["trial", 2, True]
    assert out["crash"] == ["crashed: ValueError: broken build", True]
    assert out["watchdog"] == ["watchdog reset", True]
    assert out["twice"] == ["no commit after 2 boots (last reset: power_on)", "2.0.0", "1.0.0", True]
    # What the failed attempt loaded is dropped (board was loaded before it: the harness's own).
    assert out["import"] == ["crashed at import: RuntimeError: broken build", True, False, True]
    # The firmware it loaded goes, the port's modules board.py brought stay (before: dropped too, and
    # on the rig's board the layer's second compile after the rollback found no heap).
    assert out["fresh"] == ["crashed at import: RuntimeError: broken build", [False, False, False, True]]
    assert out["garbage"] == [None, {"main.py": "old main"}]


# mypy: ignore-errors
# (MicroPython side: env_model is a copy the serial supervisor makes at boot)
"""The environment of a virtual board on the rig: hil/virtual/env.py unchanged, plus a climate chamber.

While `<control>/env.json` exists, the environment spec in it replaces the board's own (checked on
every sensor access, like the fault switches), so the rig's `set_environment` step changes what the
sensors measure without a reboot. The serial supervisor puts the board model's env.py next to this
module as `env_model.py`, and this module as `env`.
"""

import json
import os

import env_model
from env_model import *  # noqa: F403 - the board model's env module: METRICS, profiles, validate

_CHAMBER = (os.getenv("VBOARD_CONTROL") or ".") + "/env.json"
_chamber = ["", None]


def values_at(spec, t):
    try:
        with open(_CHAMBER) as f:
            text = f.read()
    except OSError:
        text = ""
    if text:
        if text != _chamber[0]:
            _chamber[1] = env_model.validate(json.loads(text))
            _chamber[0] = text
        spec = _chamber[1]
    return env_model.values_at(spec, t)

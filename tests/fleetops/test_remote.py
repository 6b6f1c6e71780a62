"""Which fields a new remote-config revision starts from (fleetops.remote.base): the last one sent,
unless the board refused it. End to end, on a board and the real broker and registry:
tests/hil/test_fleet_ops.py."""

from __future__ import annotations

import pytest

from fleetops.remote import base
from iot.devices.registry import wanted_config

pytestmark = pytest.mark.unit

SENT = {
    "rev": 3,
    "set": {"interval_s": 2, "broker": "mqtt://10.0.0.9"},
    "sets": {
        "1": {"interval_s": 1},
        "2": {"interval_s": 2},
        "3": {"interval_s": 2, "broker": "mqtt://10.0.0.9"},
    },
}
REFUSED = {"config_rev": 2, "config_error": "rev 3: not online within 10 s with it; rev 2 stays"}


def test_a_revision_not_refused_is_built_on() -> None:
    assert base(SENT, {"config_rev": 3}, 3) == SENT["set"]
    assert base(SENT, {"config_rev": 2, "config_trial": 3}, 2) == SENT["set"]  # on trial
    assert base(SENT, None, None) == SENT["set"]  # never heard of: as sent


def test_a_refused_revision_gives_way_to_the_one_the_board_runs() -> None:
    assert base(SENT, REFUSED, 2) == {"interval_s": 2}
    # Recorded in the registry (`iot config set` waited for it), the board's health not heard now.
    assert base({**SENT, "refused": {"rev": 3, "error": "…"}}, None, 2) == {"interval_s": 2}
    # The board runs its config.json alone.
    assert base(SENT, {**REFUSED, "config_rev": 0}, 0) == {}


def test_a_refusal_of_an_older_revision_or_a_run_revision_not_on_record_keeps_the_last() -> None:
    assert base(SENT, {"config_rev": 2, "config_error": "rev 2: …"}, 2) == SENT["set"]
    assert base({**SENT, "sets": {}}, REFUSED, 2) == SENT["set"]


@pytest.mark.parametrize(
    ("config", "why"),
    [
        (None, "config is NoneType"),
        ("rev 3", "config is str"),
        ({"set": {}}, "config.rev is None"),
        ({"rev": True, "set": {}}, "config.rev is True"),
        ({"rev": 0, "set": {}}, "config.rev is 0"),
        ({"rev": 2, "set": ["interval_s"]}, "config.set is list"),
        ({"rev": 2, "set": {}, "sets": {"x": {}}}, "config.sets is not"),
        ({"rev": 2, "set": {}, "sets": {"1": 5}}, "config.sets is not"),
        ({"rev": 2, "set": {}, "refused": "yes"}, "config.refused is 'yes'"),
    ],
)
def test_a_stored_wanted_config_that_is_none_says_why(config: object, why: str) -> None:
    assert wanted_config(config).startswith(why)


def test_a_wanted_config_as_iot_config_set_stores_it_is_one() -> None:
    stored = {**SENT, "trial_s": 120, "at": "2026-12-07", "refused": {"rev": 3, "error": "…"}}
    assert wanted_config(stored) == ""
    assert wanted_config({"rev": 1, "set": {}}) == ""

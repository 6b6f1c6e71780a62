"""The contract module and its codec: payload v1 validation, ids, and agreement with the written
contracts."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iot import codec, contract
from iot.contract import InvalidReading, validate_reading
from iot.harness import payloads

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
TOPIC = "sensors/kitchen/node-1/reading"


def reading(**overrides: Any) -> dict[str, Any]:
    fixed = {"humidity": 40, "pressure": 1013.2, "luminosity": None, "fw": "0.1.0"}
    return {**payloads.reading("kitchen", "node-1", 41, 1_795_900_000_000, boot=3, **fixed), **overrides}


def reason_of(topic: str, payload: bytes) -> str:
    with pytest.raises(InvalidReading) as info:
        validate_reading(topic, payload)
    return info.value.reason


def test_valid_reading_is_normalised_to_floats_and_nulls() -> None:
    out = validate_reading(TOPIC, json.dumps(reading(extra="dropped")).encode())
    assert out["humidity"] == 40.0 and isinstance(out["humidity"], float)
    assert out["luminosity"] is None
    assert "extra" not in out
    assert set(out) == set(contract.FIELDS)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "not_object"),
        (json.dumps({k: v for k, v in reading().items() if k != "seq"}).encode(), "schema"),
        (json.dumps(reading(seq="41")).encode(), "schema"),
        (json.dumps(reading(time_valid=1)).encode(), "schema"),
        (json.dumps(reading(boot=True)).encode(), "schema"),
        (b'{"v": 1, "temperature": NaN}', "not_finite"),
        (json.dumps(reading()).replace("21.5", "Infinity").encode(), "not_finite"),
        (json.dumps(reading()).replace("21.5", "1e999").encode(), "not_finite"),
        (json.dumps(reading(temperature=85.01)).encode(), "out_of_range"),
        (json.dumps(reading(seq=-1)).encode(), "out_of_range"),
        (json.dumps(reading(seq=2**63)).encode(), "out_of_range"),
        (json.dumps(reading(boot=2**64)).encode(), "out_of_range"),
        (json.dumps(reading(time_valid=False, ts=2**63)).encode(), "out_of_range"),
        (json.dumps(reading(place="garage")).encode(), "topic_mismatch"),
        (json.dumps(reading(fw="x" * 900)).encode(), "too_large"),
        (json.dumps(reading(v=2)).encode(), "unknown_version"),
    ],
)
def test_each_bad_payload_gets_its_stable_reason(payload: bytes, reason: str) -> None:
    assert reason_of(TOPIC, payload) == reason


class _IntSub(int):
    pass


# Values at and beyond every edge the validation has, for any field.
_EDGES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    _IntSub(1),
    1.0,
    -40.0,
    -40.01,
    85.0,
    85.01,
    100.0,
    300.0,
    1100.0,
    150000.0,
    150000.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    1e308,
    12,
    1_795_900_000_000,
    contract.TS_MAX_MS,
    contract.TS_MAX_MS - 1,
    "",
    "x",
    "x" * 64,
    "x" * 65,
    "node-1",
    "kitchen",
    "garage",
    "n\u00f6de",
    "fw-\ud800",
    "1",
    [],
    {},
]


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*contract.FIELDS, "extra"]), st.sampled_from(_EDGES), max_size=4),
    st.sets(st.sampled_from(list(contract.FIELDS)), max_size=2),
)
def test_the_fast_path_accepts_only_what_the_full_checks_accept_and_returns_the_same(
    changes: dict[str, Any], missing: set[str]
) -> None:
    # _validate_fields tries a fast path for plain readings first; the full checks name every error.
    _fast_agrees(changes, missing)


def _fast_agrees(changes: dict[str, Any], missing: set[str]) -> None:
    obj = {**reading(), **changes}
    for name in missing:
        obj.pop(name, None)
    ids = contract.TopicIds(place="kitchen", device="node-1")
    fast = codec._valid_fields_fast(ids, obj)
    try:
        full = codec._validate_fields_fully(ids, obj)
    except InvalidReading:
        assert fast is None
        return
    if fast is not None:
        assert list(fast.items()) == list(full.items())
        assert [type(v) for v in fast.values()] == [type(v) for v in full.values()]


def test_the_fast_path_agrees_with_the_full_checks_on_every_edge_of_every_field() -> None:
    for name in [*contract.FIELDS, "extra"]:
        for value in _EDGES:
            _fast_agrees({name: value}, set())
        _fast_agrees({}, {name})
    # So that the comparisons compare something: a plain reading takes the fast path.
    ids = contract.TopicIds(place="kitchen", device="node-1")
    assert codec._valid_fields_fast(ids, reading()) == codec._validate_fields_fully(ids, reading())


def test_the_codec_imports_on_its_own_and_the_contract_hands_out_its_functions() -> None:
    # iot.contract and iot.codec import each other; the package loads the contract first.
    probe = "import iot.codec, iot.contract; print(iot.contract.encode is iot.codec.encode)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


def test_json_nested_beyond_the_parser_is_malformed_json_not_an_exception() -> None:
    # 1,000 nested arrays fit in a 1 KiB payload; json's parser raised RecursionError on them, which
    # nothing downstream of the contract expected (issue #19).
    assert reason_of(TOPIC, b"[" * 1000) == "malformed_json"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\udc00b", "\\ude00\\ud83d"])
def test_unpaired_surrogate_escape_in_a_string_field_is_schema(escape: str) -> None:
    # Valid JSON, not valid text: the backend's orjson cannot encode the string it decodes to.
    payload = json.dumps(reading(fw="X")).replace('"X"', f'"{escape}"').encode()
    assert reason_of(TOPIC, payload) == "schema"


def test_a_surrogate_pair_escape_is_one_character_and_valid() -> None:
    payload = json.dumps(reading(fw="X")).replace('"X"', '"fw-\\ud83d\\ude00"').encode()
    assert validate_reading(TOPIC, payload)["fw"] == "fw-\U0001f600"


def test_bad_id_charset_in_topic_or_payload() -> None:
    assert reason_of("sensors/kitchen/node 1/reading", json.dumps(reading()).encode()) == "bad_id"
    bad = json.dumps(reading(device="node.1")).encode()
    assert reason_of("sensors/kitchen/node-1/reading", bad) == "bad_id"


@pytest.mark.parametrize("bad", ["node-1\n", "node-1\r\n", "\nnode-1", "node-1\n\n", "x" * 65, ""])
def test_an_id_must_match_whole(bad: str) -> None:
    # `$` matches before a trailing newline: `node-1\n` passed once, and through Kafka it became a
    # device of its own beside `node-1`.
    assert not contract.is_id(bad)
    assert reason_of(f"sensors/kitchen/{bad}/reading", json.dumps(reading(device=bad)).encode()) == "bad_id"
    assert reason_of(TOPIC, json.dumps(reading(place=bad)).encode()) == "bad_id"


def test_valid_ids() -> None:
    assert all(contract.is_id(v) for v in ("node-1", "a", "A_b-9", "x" * 64))
    assert not any(contract.is_id(v) for v in (None, 1, b"node-1", "node.1", "n\u00f6de"))


def test_not_a_reading_topic() -> None:
    assert reason_of("sensors/kitchen/node-1/status", b"{}") == "bad_topic"


def test_unsynced_clock_may_carry_any_ts() -> None:
    out = validate_reading(TOPIC, json.dumps(reading(time_valid=False, ts=12)).encode())
    assert out["ts"] == 12


def test_every_reason_code_is_snake_case_and_documented() -> None:
    doc = (ROOT / "docs" / "CONTRACT.md").read_text()
    for code in contract.DLQ_REASONS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code)
        assert f"`{code}`" in doc, f"reason {code} missing from docs/CONTRACT.md"


def test_ids_are_deterministic() -> None:
    assert contract.reading_id("node-1", 3, 41) == "node-1:3:41"
    start = 1_795_900_020_000
    assert contract.window_id("kitchen", "hopping", 300, start) == f"kitchen:hopping:300:{start}"


def _env_table(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("IOT_"):
            names, values = cells[0].split("` / `"), cells[1].split("` / `")
            found.update(zip(names, values, strict=True))
    return found


def test_env_defaults_match_the_project_and_the_team_contract() -> None:
    ours = _env_table((ROOT / "docs" / "CONTRACT.md").read_text())
    assert ours == dict(contract.ENV_DEFAULTS)
    shared = ROOT.parent / "shared" / "CONTRACT.md"
    if shared.exists():  # beside the checkout on developer machines; CI refuses to run without it
        assert _env_table(shared.read_text()) == dict(contract.ENV_DEFAULTS)


def test_topic_names_match_the_team_contract() -> None:
    shared = ROOT.parent / "shared" / "CONTRACT.md"
    if not shared.exists():
        # Only outside CI: in CI tests/conftest.py refuses to start without it.
        pytest.skip("../shared/CONTRACT.md is not beside this checkout")
    text = shared.read_text()
    for name in (
        contract.TOPIC_READINGS,
        contract.TOPIC_DLQ,
        contract.TOPIC_WINDOWS_SENSOR,
        contract.TOPIC_WINDOWS_PLACE,
        contract.READING_TOPIC,
        contract.STATUS_TOPIC,
    ):
        assert f"`{name}`" in text


def _firmware_health_keys() -> dict[str, set[str]]:
    """Top-level keys of the health objects firmware/node.py publishes (`Node.health`, `safe_mode`):
    the keys of each dict literal there that is not itself the value of another (sensor_errors' own
    keys are not fields)."""
    tree = ast.parse((ROOT / "firmware" / "node.py").read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in ("health", "safe_mode"):
            dicts = [d for d in ast.walk(node) if isinstance(d, ast.Dict)]
            inner = {id(v) for d in dicts for v in d.values}
            found[node.name] = {
                key.value
                for d in dicts
                if id(d) not in inner
                for key in d.keys
                if isinstance(key, ast.Constant) and isinstance(key.value, str)
            }
    return found


def _fleet_health_keys() -> set[str]:
    """Keys the firmware's remote configuration and updates add to health: `out["..."] = ...` (and
    `h[...]`) in the `fields` methods of fleet.py, ota.py and remote_config.py."""
    found: set[str] = set()
    for module in ("fleet", "ota", "remote_config"):
        tree = ast.parse((ROOT / "firmware" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "fields":
                for target in ast.walk(node):
                    if (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.ctx, ast.Store)
                        and isinstance(target.slice, ast.Constant)
                    ):
                        found.add(target.slice.value)
    return found


def test_health_fields_are_exactly_what_the_firmware_publishes_and_are_documented() -> None:
    published = _firmware_health_keys()
    assert set(published) == {"health", "safe_mode"}, "firmware/node.py builds health elsewhere now"
    top = (published["health"] | published["safe_mode"] | _fleet_health_keys()) - {"device", "place"}
    fields = set(contract.HEALTH_FIELDS)
    assert top == fields, f"firmware only: {top - fields}; contract only: {fields - top}"
    doc = (ROOT / "docs" / "CONTRACT.md").read_text()
    for name in contract.HEALTH_FIELDS:
        assert f"| `{name}` |" in doc, f"health field {name} is not in docs/CONTRACT.md's health table"
    assert f"`{contract.STATUS_SAFE_MODE}`" in doc
    # ...and it is the status the firmware retains in safe mode.
    assert f'status_topic, b"{contract.STATUS_SAFE_MODE}"' in (ROOT / "firmware" / "node.py").read_text()

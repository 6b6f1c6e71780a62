"""pytest plugin: `pytest --hil-rig RIG` gives a `rig` fixture (a RigSession: stack up, boards
powered) and a `board` fixture parametrised over the rig's boards, so a test written once runs on
every board of a rig (test ids `test_x[kitchen]`, `test_x[esp-a]`).

    def test_readings_arrive_through_an_outage(rig, board):
        rig.step(board, "cut_network", seconds=10)
        rig.step(None, "wait", seconds=10)
        failed = [m for m in rig.step(board, "expect", windows=False) if m.outcome != "passed"]
        assert not failed

Without --hil-rig, tests using these fixtures are skipped. Each test's expectations look at what
happened since the test started.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.rig import spec
from hil.rig.boards import RigBoard
from hil.rig.session import RigSession

_RIG = pytest.StashKey[spec.Rig]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop rig")
    group.addoption("--hil-rig", default=None, type=Path, help="rig file: run `board` tests on its boards")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--hil-rig")
    if path is not None:
        config.stash[_RIG] = spec.load(path, uuid.uuid4().hex[:6])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    rig = metafunc.config.stash.get(_RIG, None)
    if rig is not None and "board" in metafunc.fixturenames:
        ids = [b.id for b in rig.boards]
        metafunc.parametrize("board", ids, indirect=True, ids=ids, scope="session")


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RigSession]:
    loaded = request.config.stash.get(_RIG, None)
    if loaded is None:
        pytest.skip("no rig: run with --hil-rig RIG")
    session = RigSession(loaded, tmp_path_factory.mktemp(f"hil-{loaded.run_id}"))
    try:
        session.up()
        yield session
    finally:
        session.down()


@pytest.fixture(scope="session")
def board(request: pytest.FixtureRequest, rig: RigSession) -> RigBoard:
    return rig.boards[request.param]


@pytest.fixture(autouse=True)
def _hil_test_start(request: pytest.FixtureRequest) -> None:
    # The plugin is loaded in every pytest session (an entry point); only a session run with
    # --hil-rig owns the `rig` fixture. Elsewhere a suite's own `rig` (tests/backend) is not ours.
    if request.config.stash.get(_RIG, None) is not None and "rig" in request.fixturenames:
        rig = request.getfixturevalue("rig")
        if isinstance(rig, RigSession):
            rig.begin()

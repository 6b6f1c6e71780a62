"""Children started again when they exit (iot/harness/supervisor.py, what `iot demo` runs its services
under), on real processes; the backoff's clock is the test's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from iot.harness.children import Children
from iot.harness.errors import ChildFailed
from iot.harness.supervisor import RestartPolicy, Supervisor, exit_reason
from tests.support import FakeClock, wait_for

pytestmark = pytest.mark.unit


def _exited(supervisor: Supervisor, name: str) -> None:
    wait_for(lambda: not supervisor.children.children[0].alive(), 10, f"{name} to exit")


def test_a_stall_exit_is_started_again_after_its_backoff_with_the_reason_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Exits 75 the first time, as the backend's stall watch does; runs on the second.
    script = f"if [ -e {tmp_path}/ran ]; then exec sleep 60; fi; touch {tmp_path}/ran; exit 75"
    children = Children(tmp_path / "logs")
    clock = FakeClock()
    supervisor = Supervisor(children, RestartPolicy(first_backoff_s=2), clock)
    child = children.start("backend", ["/bin/sh", "-c", script])
    try:
        _exited(supervisor, "the first run")
        with caplog.at_level(logging.INFO):
            assert supervisor.check() == [
                "backend stalled past IOT_BACKEND_STALL_S (EX_TEMPFAIL: it asks to be started again) "
                "(exit 75): restarting in 2s"
            ]
            clock.now += 1.9
            assert supervisor.check() == [] and not child.alive()  # not before its backoff
            clock.now += 0.1
            (restarted,) = supervisor.check()
        assert restarted.startswith("backend started again (pid ") and child.alive()
        assert supervisor.restarts("backend") == 1 and child.starts == 2
        logged = caplog.text
        assert "child_exited child=backend code=75" in logged and "child_restarted child=backend" in logged
        assert supervisor.check() == []  # running: nothing to do
    finally:
        children.stop_all()


def test_a_crash_loop_is_not_hidden_the_backoff_doubles_then_it_gives_up(tmp_path: Path) -> None:
    children = Children(tmp_path / "logs")
    clock = FakeClock()
    supervisor = Supervisor(children, RestartPolicy(max_restarts=2, window_s=60, first_backoff_s=1), clock)
    children.start("gateway", ["/bin/sh", "-c", "echo network thread gone; exit 70"])
    try:
        for backoff in (1, 2):
            _exited(supervisor, "the gateway")
            (said,) = supervisor.check()
            assert said.endswith(f"(exit 70): restarting in {backoff}s") and "internal thread died" in said
            clock.now += backoff
            supervisor.check()
        _exited(supervisor, "the gateway")
        with pytest.raises(
            ChildFailed, match=r"(?s)after 2 restarts within 60s: a crash loop.*network thread gone"
        ):
            supervisor.check()
        # Outside the window the count starts again: a service that ran for a while is restarted.
        clock.now += 61
        (said,) = supervisor.check()
        assert said.endswith("restarting in 1s")
    finally:
        children.stop_all()


def test_exit_reasons_are_named() -> None:
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(1) == "exited with 1"
    assert exit_reason(0) == "exited by itself"

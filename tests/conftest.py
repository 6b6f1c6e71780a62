"""Hooks every test folder shares.

`request.node.rep_setup|rep_call|rep_teardown` carry the phase reports, so a fixture can tell in its
teardown whether the test failed and then print the logs of the services it started (see
`tests.support.failed`).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

SHARED_CONTRACT = Path(__file__).resolve().parents[1].parent / "shared" / "CONTRACT.md"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_sessionstart() -> None:
    # In CI the team contract is laid beside the clone; without it the drift tests would prove nothing.
    if os.environ.get("CI") and not SHARED_CONTRACT.exists():
        raise pytest.UsageError(
            f"CI=true but {SHARED_CONTRACT} is missing: the contract drift tests cannot run. "
            "Lay ../shared beside the checkout (as CI does) or unset CI for a local run."
        )

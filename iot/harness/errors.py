"""The harness's exceptions (reported by `iot` as `Type: message`, like every IotError).

HarnessError
 └── ChildFailed   a child process exited or did not become ready in time; carries its log tail
"""

from __future__ import annotations

from iot.errors import IotError

__all__ = ["ChildFailed", "HarnessError"]


class HarnessError(IotError):
    """Base of the harness's own errors."""


class ChildFailed(HarnessError):
    """A child process exited or did not become ready; the message carries its log tail."""

"""The hardware-in-the-loop rig: a YAML rig file (spec) -> boards and stack (drivers) -> a runner
(strategy) -> reports. `iot hil check|run RIG`; pytest plugin in hil.rig.pytest_plugin."""

from hil.rig.spec import Rig, load

__all__ = ["Rig", "load"]

"""A private Mosquitto per test: for faults the shared broker must not suffer (stop, kill, auth, TLS).

The broker itself is the product's (`iot.app.stack.private`, which the rig and the benchmarks use
too); this module is where the test folders import it from."""

from iot.app.stack.private import HOST, MOSQUITTO, PrivateBroker

__all__ = ["HOST", "MOSQUITTO", "PrivateBroker"]

"""A deterministic scripted environment: what each metric truly is at epoch time t (seconds).

A spec maps each metric to a profile:
  {"kind": "constant", "value": v}
  {"kind": "ramp", "from": a, "to": b, "start": t0, "duration": s}       (clamped outside)
  {"kind": "day", "mean": m, "amplitude": a, "peak_hour": h}             (UTC sine, 24 h period)
  {"kind": "daylight", "peak": p, "sunrise_hour": r, "sunset_hour": s}   (half sine, 0 at night)
The same functions run inside a virtual board (MicroPython) and in tests (CPython), so a test can
ask what a board measured at time t without talking to it.
"""

import math

METRICS = ("temperature", "humidity", "pressure", "luminosity")
DAY_S = 86400

# Default environments for well-known place names; other names get values derived from the name.
PLACES = {
    "kitchen": (22.5, 45.0, 1013.2, 320.0),
    "garage": (11.0, 70.0, 1008.5, 60.0),
    "office": (24.0, 38.0, 1012.0, 500.0),
    "bedroom": (19.5, 50.0, 1013.0, 15.0),
    "basement": (14.0, 65.0, 1014.5, 5.0),
    "attic": (28.0, 30.0, 1009.0, 120.0),
    "lab": (21.0, 40.0, 1011.0, 800.0),
    "hall": (18.0, 48.0, 1012.5, 200.0),
}
PLACE_ORDER = ("kitchen", "garage", "office", "bedroom", "basement", "attic", "lab", "hall")


try:
    from iot.errors import IotError
except ImportError:  # MicroPython on a virtual board: only this folder and the firmware are there

    class EnvError(ValueError):
        pass

else:  # CPython (the rig, `iot boards`): part of the product's exception tree

    class EnvError(IotError, ValueError):  # type: ignore[no-redef]
        """A scripted environment is not valid; the message names the metric and the field."""


def _name_hash(name: str) -> int:
    h = 2166136261
    for c in name:
        h = ((h ^ ord(c)) * 16777619) & 0xFFFFFFFF
    return h


def place_values(place: str) -> tuple[float, float, float, float]:
    """(temperature, humidity, pressure, luminosity) a place holds in the constant environment."""
    if place in PLACES:
        return PLACES[place]
    h = _name_hash(place)
    return (
        15.0 + (h % 150) / 10,
        35.0 + ((h >> 8) % 300) / 10,
        1005.0 + ((h >> 16) % 150) / 10,
        float(50 + (h >> 24) % 500),
    )


def constant_spec(place: str) -> dict[str, dict[str, object]]:
    values = place_values(place)
    return {m: {"kind": "constant", "value": values[i]} for i, m in enumerate(METRICS)}


def day_spec(place: str) -> dict[str, dict[str, object]]:
    """A day cycle around the place's constant values: warmest mid-afternoon, light by day."""
    t, rh, p, lux = place_values(place)
    return {
        "temperature": {"kind": "day", "mean": t, "amplitude": 3.0, "peak_hour": 15},
        "humidity": {"kind": "day", "mean": rh, "amplitude": 8.0, "peak_hour": 5},
        "pressure": {"kind": "day", "mean": p, "amplitude": 1.5, "peak_hour": 10},
        "luminosity": {"kind": "daylight", "peak": lux * 4, "sunrise_hour": 6, "sunset_hour": 20},
    }


def _num(profile: dict[str, object], key: str) -> float:
    value = profile.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise EnvError("profile field '" + key + "' must be a number, got " + repr(value))
    return float(value)


def profile_value(profile: dict[str, object], t: float) -> float:
    kind = profile.get("kind")
    if kind == "constant":
        return _num(profile, "value")
    if kind == "ramp":
        a, b = _num(profile, "from"), _num(profile, "to")
        start, duration = _num(profile, "start"), _num(profile, "duration")
        if duration <= 0:
            return b if t >= start else a
        frac = (t - start) / duration
        frac = 0.0 if frac < 0 else 1.0 if frac > 1 else frac
        return a + (b - a) * frac
    if kind == "day":
        mean, amp, peak = _num(profile, "mean"), _num(profile, "amplitude"), _num(profile, "peak_hour")
        phase = ((t % DAY_S) / 3600 - peak) / 24 * 2 * math.pi
        return mean + amp * math.cos(phase)
    if kind == "daylight":
        peak = _num(profile, "peak")
        rise, sets = _num(profile, "sunrise_hour"), _num(profile, "sunset_hour")
        hour = (t % DAY_S) / 3600
        if hour <= rise or hour >= sets:
            return 0.0
        return peak * math.sin((hour - rise) / (sets - rise) * math.pi)
    raise EnvError("unknown profile kind " + repr(kind))


def values_at(spec: dict[str, dict[str, object]], t: float) -> dict[str, float]:
    """The true value of every metric at epoch time t (seconds)."""
    out = {}
    for m in METRICS:
        if m not in spec:
            raise EnvError("environment has no profile for " + m)
        out[m] = profile_value(spec[m], t)
    return out


def validate(spec: object) -> dict[str, dict[str, object]]:
    """Check a spec by evaluating it once; raises EnvError naming the metric."""
    if not isinstance(spec, dict):
        raise EnvError("environment must be an object of metric -> profile")
    for m in METRICS:
        profile = spec.get(m)
        if not isinstance(profile, dict):
            raise EnvError("environment." + m + " must be a profile object")
        try:
            profile_value(profile, 0.0)
        except EnvError as exc:
            raise EnvError("environment." + m + ": " + str(exc)) from None
    return spec

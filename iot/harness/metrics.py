"""Reading a Prometheus text endpoint (`/metrics` of the gateway, the backend, FerretDB …)."""

from __future__ import annotations

import http.client
import urllib.parse
import urllib.request
from collections.abc import Iterable

from iot.harness.ports import HOST

__all__ = ["answers", "scrape", "total", "url"]


def url(port: int, host: str = HOST) -> str:
    return f"http://{host}:{port}/metrics"


def scrape(endpoint: str, only: Iterable[str] = ()) -> dict[str, float]:
    """Every sample by `name{labels}`; empty when the endpoint does not answer.

    `only` (sample names, labels allowed) asks prometheus-client for those metrics alone (its
    `name[]` filter): a full scrape of the backend renders ~1,000 series under the worker's GIL, a
    load a benchmark polling four times a second must not add to what it measures."""
    names = {n.split("{", 1)[0] for n in only}
    # The filter matches family or sample names, which differ by these suffixes (counters, summaries).
    wanted = sorted(names | {n.removesuffix("_total").removesuffix("_sum") for n in names})
    if wanted:
        endpoint += "?" + urllib.parse.urlencode([("name[]", f) for f in wanted])
    try:
        with urllib.request.urlopen(endpoint, timeout=2) as response:
            text = response.read().decode()
    except (OSError, http.client.HTTPException):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(endpoint: str, name: str) -> float | None:
    """The sum of a metric's samples (every label set), None when unreachable or absent."""
    found = [v for k, v in scrape(endpoint).items() if k == name or k.startswith(name + "{")]
    return sum(found) if found else None


def answers(endpoint: str) -> bool:
    """True when the endpoint answers 200."""
    try:
        with urllib.request.urlopen(endpoint, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):
        return False

"""What bench/soak.py records over time, every `--sample-s`: each process's RSS and CPU seconds, the
machine's CPU pressure (time runnable tasks waited for a CPU), the backend's consumer lag, and the
fleet's counters. A gateway or backend that exited on its own is restarted here (systemd's
Restart=always) and reported."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from soak_common import cpu_pressure, log
from soak_kafka import KafkaWatch, LagProbe
from soak_procs import Service

from iot.harness.children import cpu_s, rss_kb
from iot.kafka import KafkaConnection


class Sampler(threading.Thread):
    def __init__(
        self,
        interval_s: float,
        kafka: Callable[[], KafkaConnection],
        pids: Callable[[], dict[str, int | None]],
        fleet_sum: Callable[[str], int],
        services: dict[str, Service],
        lock: threading.Lock,
        watch: Callable[[], KafkaWatch | None],
    ) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.kafka = kafka  # called once the stack is up (its SASL user's password is made then)
        self.pids = pids
        self.fleet_sum = fleet_sum
        self.services = services
        self.lock = lock
        self.watch = watch
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        lagger = LagProbe(self.kafka())
        while not self.stop_event.wait(self.interval_s):
            self.samples.append(self.sample(lagger))
            self.supervise()
        lagger.close()

    def sample(self, lagger: LagProbe) -> dict[str, Any]:
        pids = self.pids()
        watch = self.watch()
        return {
            "t": round(time.time(), 3),
            "pid": pids,
            "rss_kb": {name: rss_kb(pid) for name, pid in pids.items()},
            "cpu_s": {name: cpu_s(pid) for name, pid in pids.items()},
            "cpu_pressure_us": cpu_pressure(),
            "lag": lagger.lag(),
            "outbox": self.fleet_sum("outbox"),
            "connected": self.fleet_sum("connected"),
            "published": self.fleet_sum("published"),
            "kafka_distinct": watch.distinct() if watch else 0,
        }

    def supervise(self) -> None:
        for svc in self.services.values():
            with self.lock:
                if svc.planned_down or svc.proc is None or svc.alive():
                    continue
                code = svc.returncode
                log("unplanned_exit", service=svc.name, code=code, action="restarting")
                svc.unplanned.append({"t": round(time.time(), 3), "code": code})
                svc.launch()

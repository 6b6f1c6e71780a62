"""Run one gateway process: wire settings, metrics, Kafka sink, bridge and MQTT source together.

SIGTERM/SIGINT: stop taking messages, wait for Kafka to confirm what is in flight, ack it, disconnect
(the session stays with the broker) and exit 0. Exit non-zero only when the gateway cannot go on: a
configuration the broker cannot work with (SettingsError, exit 1), a fatal Kafka error (exit 1), or
paho's network thread gone (exit 70, EX_SOFTWARE), which would otherwise leave a process that looks
up and receives nothing; a supervisor (systemd, compose `restart:`) starts it again, and what was not
acked is redelivered to it.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Final

from iot import heap, log

from .bridge import Bridge
from .kafka_sink import KafkaSink
from .metrics import GatewayMetrics
from .mqtt_source import MqttSource
from .registry import RegistryWriter
from .settings import GatewaySettings

__all__ = ["EXIT_MQTT_THREAD_DIED", "run"]

EXIT_MQTT_THREAD_DIED: Final = 70  # EX_SOFTWARE (sysexits.h)

_log = log.get("gateway")
_POLL_S = 0.05
_STATS_EVERY_S = 30.0


def run(settings: GatewaySettings) -> int:
    _log.info("gateway_starting", **settings.describe())
    metrics = GatewayMetrics()
    sink = KafkaSink(settings.kafka_config(), metrics)
    registry = RegistryWriter.connect(settings.mongo_uri, metrics.registry) if settings.registry else None
    source = MqttSource(settings, metrics, registry)
    notify = source.notify if settings.e2e_ack else None
    bridge = Bridge(
        sink,
        metrics,
        source.ack,
        settings.max_in_flight,
        notify,
        settings.max_clock_ahead_s * 1000,
        resume=source.resume,
    )
    metrics.in_flight.set_function(lambda: bridge.in_flight)
    metrics.in_flight_peak.set_function(lambda: bridge.peak_in_flight)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("gateway_stopping", signal=signal.Signals(signum).name, in_flight=bridge.in_flight)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _log_thread_crashes()
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
        _log.info("metrics_serving", url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    if registry is not None:
        registry.start()
    source.start(bridge.on_message, bridge.may_take)
    next_stats = time.monotonic() + _STATS_EVERY_S
    try:
        while not stop.is_set():
            sink.poll(_POLL_S)
            bridge.service()
            if source.fatal is not None:
                raise source.fatal
            if not source.alive():
                metrics.mqtt_connected.set(0)
                _log.error(
                    "mqtt_thread_died",
                    received=bridge.received,
                    in_flight=bridge.in_flight,
                    exit_code=EXIT_MQTT_THREAD_DIED,
                    action="exiting so the supervisor restarts the gateway (un-acked readings stay with "
                    "the broker); please report with the thread_crashed line above",
                )
                return EXIT_MQTT_THREAD_DIED
            if time.monotonic() >= next_stats:
                next_stats += _STATS_EVERY_S
                heap.release_free_memory()  # a Kafka outage's backlog must not stay in the RSS
                _log.info(
                    "gateway_stats",
                    received=bridge.received,
                    completed=bridge.completed,
                    in_flight=bridge.in_flight,
                    kafka_up=int(sink.reachable),
                    mqtt_connected=int(source.subscribed.is_set()),
                )
        return _drain(settings, sink, bridge)
    finally:
        source.stop()
        if registry is not None:
            registry.stop()


def _log_thread_crashes() -> None:
    """An exception that ends a thread (paho's network thread) is logged as an event as well as by
    Python's own hook (which prints the traceback)."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        _log.error(
            "thread_crashed",
            thread=args.thread.name if args.thread is not None else "?",
            error=repr(args.exc_value)[:300],
        )
        default(args)

    threading.excepthook = hook


def _drain(settings: GatewaySettings, sink: KafkaSink, bridge: Bridge) -> int:
    bridge.accepting = False
    deadline = time.monotonic() + settings.drain_timeout_s
    while bridge.in_flight > 0 and time.monotonic() < deadline:
        sink.poll(_POLL_S)
        bridge.service()
    left = bridge.in_flight
    counts = {"received": bridge.received, "completed": bridge.completed, "acked": bridge.acked}
    if left:
        _log.warning(
            "gateway_stopped_with_unacked",
            unacked=left,
            drain_timeout_s=settings.drain_timeout_s,
            **counts,
            action="nothing lost: the broker redelivers them when a gateway with this client id returns",
        )
    else:
        _log.info("gateway_stopped", unacked=0, **counts)
    return 0

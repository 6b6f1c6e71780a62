"""Faust's Monitor without its per-message statistics.

Faust adds its Monitor to the app's sensors on every worker. It records, for each message and each
stream event, counters keyed by topic, stream and task, a `time_in`/`time_out` pair and a runtime
deque, and for each produced record a send latency: statistics for Faust's web views and its
statsd/Datadog/Prometheus sensors, none of which this backend runs (web is off; our metrics are
`metrics.py`). py-spy put that bookkeeping at 1.4% of the worker's event loop (~13 us per reading on a
loaded box) in `bench/backend_throughput.py`.

`QuietMonitor` is passed as the app's `monitor` (a supported App argument). It stays a `Monitor`
because Faust calls it directly (`on_tp_commit`, `track_tp_end_offset`, `stream_inbound_time` in the
aiokafka driver's stalled-stream check), and it keeps what that check reads: the time each partition
last delivered an event to a stream (the batch path's agents stamp it for each batch they take,
backend/app.py), so the "stream has not processed events" warnings stay true.
Commit, rebalance and assignment hooks (a few per second at most) stay Faust's own.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors import Monitor
from faust.types import TP, EventT, Message, StreamT


class QuietMonitor(Monitor):
    """The Monitor with its per-message and per-event statistics switched off."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        """Per message: nothing (Faust counted it and stamped `time_in`)."""

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        """Per event: only what the driver's stalled-stream check reads."""
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        """Per event: nothing (Faust kept a runtime deque)."""

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        """Per acknowledged message: nothing (Faust stamped `time_out`)."""

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        """Per produced record (changelog): nothing (Faust counted it by topic)."""
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        """Per produced record: nothing (Faust kept a send latency deque)."""

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        """Per fetched record: nothing (the high-water mark per partition; our lag gauge reads the
        consumer's own)."""

"""Virtual boards and the link: outages, the outbox, retransmission, acks, oversized packets, DNS."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from hil.netfault import MqttProxy
from hil.probe import Probe, broker_address
from iot.harness.mqtt import MqttLogin
from tests.hil.conftest import (
    BoardFactory,
    first_occurrences,
    health_of,
    outbox_entries,
    outbox_state,
    publishing,
    seqs_of,
)
from tests.support import wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


def test_network_outage_delivers_every_reading_in_order_after_reconnect(
    make_board: BoardFactory, probe: Probe
) -> None:
    """The issue's 60 s broker stop, as a cut of the board's network (the shared broker stays up):
    the same fault from the board's side: socket errors, will, reconnect with backoff, outbox
    replay. 6 s (20 readings at 0.3 s) by default; IOT_HIL_OUTAGE_S=60 runs the full minute."""
    outage_s = float(os.environ.get("IOT_HIL_OUTAGE_S", "6"))
    queued_target = max(5, int(outage_s / 0.3))
    board = make_board(interval_s=0.3)
    board.start()
    wait_for(lambda: len(probe.readings(board.device)) >= 3, 20, "3 readings before the outage")
    board.cut_network()
    wait_for(
        lambda: outbox_state(board)[1] >= queued_target,
        outage_s * 2 + 20,
        f"{queued_target} readings queued offline",
    )
    queued = outbox_entries(board)
    board.restore_network()
    last = queued[-1]["seq"]
    wait_for(lambda: last in seqs_of(probe.readings(board.device)), 30, f"seq {last} after reconnect")
    seqs = seqs_of(probe.readings(board.device))
    assert first_occurrences(seqs) == list(range(len(first_occurrences(seqs))))
    assert {q["seq"] for q in queued} <= set(seqs)
    assert len(seqs) - len(set(seqs)) <= 1  # at most the one reading in flight when the link broke
    statuses = [m.payload for m in probe.messages("status", board.device)]
    assert statuses[:3] == [b"online", b"offline", b"online"]  # the will while away, birth on return
    assert "link_down" in board.console() and "link_up" in board.console()


def test_reboot_while_offline_keeps_the_outbox_and_replays_it_first(
    make_board: BoardFactory, probe: Probe
) -> None:
    board = publishing(make_board(interval_s=0.3), probe)
    board.cut_network()
    wait_for(lambda: outbox_state(board)[1] >= 5, 20, "5 readings queued")
    board.kill()
    before_reboot = outbox_entries(board)
    assert {r["boot"] for r in before_reboot} == {0}
    board.start()
    wait_for(lambda: any(r["boot"] == 1 for r in outbox_entries(board)), 20, "boot 1 queueing too")
    board.restore_network()
    wait_for(lambda: seqs_of(probe.readings(board.device), boot=1)[:3] == [0, 1, 2], 30, "boot 1 readings")
    readings = probe.readings(board.device)
    keys = [(r["boot"], r["seq"]) for r in readings]
    for r in before_reboot:
        assert (0, r["seq"]) in keys
    assert first_occurrences(keys) == sorted(set(keys))  # boot 0's backlog first, then boot 1, in order
    boot0 = sorted({s for b, s in keys if b == 0})
    assert boot0 == list(range(boot0[-1] + 1))


def test_full_outbox_drops_the_oldest_and_reports_how_many(make_board: BoardFactory, probe: Probe) -> None:
    # Wi-Fi at once: with 1 s of association at boot a 5-slot outbox would drop seq 0 already.
    board = publishing(make_board(interval_s=0.3, outbox_slots=5, spec={"wifi_assoc_ms": 0}), probe)
    board.cut_network()
    wait_for(lambda: outbox_state(board)[2] >= 4, 30, "4 readings dropped")
    board.restore_network()
    wait_for(lambda: outbox_state(board)[1] == 0, 30, "the outbox drained")
    dropped = outbox_state(board)[2]  # final: nothing drops once the backlog is gone

    def missing() -> list[int]:
        seqs = set(seqs_of(probe.readings(board.device)))
        return sorted(set(range(max(seqs) + 1)) - seqs)

    # The board drops the oldest `dropped` unacked readings. The first of them may be the one it had
    # published when the link broke: the broker can have it although its PUBACK never reached the
    # board, so the subscriber misses `dropped` readings, or one fewer (as in the outage test above).
    wait_for(lambda: len(missing()) <= dropped, 10, f"at most {dropped} readings missing at the subscriber")
    gap = missing()
    assert dropped - 1 <= len(gap) <= dropped
    assert gap == list(range(gap[0], gap[0] + len(gap)))  # one run: the oldest of the backlog
    wait_for(
        lambda: [m for m in probe.messages("health", board.device) if m.json()["outbox_dropped"] == dropped],
        10,
        f"health reporting outbox_dropped={dropped}",
    )


def test_unacknowledged_publish_is_retransmitted_with_dup_and_nothing_is_lost(
    make_board: BoardFactory, probe: Probe, broker_url: str
) -> None:
    host, port = broker_address(broker_url)
    with MqttProxy(host, port) as proxy:
        board = make_board(broker=f"mqtt://127.0.0.1:{proxy.port}", puback_timeout_s=0.5)
        board.start()
        wait_for(lambda: len(probe.readings(board.device)) >= 2, 20, "2 readings through the proxy")
        proxy.drop_pubacks(1)
        wait_for(lambda: proxy.dup_publishes >= 1, 10, "a DUP retransmission")
        seen = len(probe.readings(board.device))
        wait_for(
            lambda: len(probe.readings(board.device)) >= seen + 3, 20, "readings after the retransmission"
        )
        console = board.console()  # before the proxy goes away and takes the link with it
    seqs = seqs_of(probe.readings(board.device))
    assert proxy.dropped_pubacks == 1
    # Each DUP retransmission is one more delivery (QoS 1: at least once); one lost PUBACK makes
    # one, a slow PUBACK on a loaded machine can make another.
    dup_readings = [t for t in proxy.dup_topics if t.endswith("/reading")]
    assert dup_readings
    assert len(seqs) - len(set(seqs)) == len(dup_readings)
    assert first_occurrences(seqs) == list(range(max(seqs) + 1))
    assert "link_down" not in console  # one lost ack is retried, not treated as a dead link


def test_healthy_board_keeps_one_connection_for_minutes_of_virtual_time(
    make_board: BoardFactory, probe: Probe
) -> None:
    """ESP32 sockets raise OSError(116) when an idle read times out and writes can be short: a
    client that takes 116 for a dead link (110 is Linux's ETIMEDOUT) reconnects every few seconds.
    The clock runs 20x (as the TLS listener's test does), so ~15 s of real time are 5 minutes on the
    board, with a ping every 2.5 s (keepalive 5 s) between readings; while the board waits for the
    broker its clock runs at host speed (hil/virtual/vnet.py Clock.hold), so a PUBACK or PINGRESP
    takes as long on the board as on the wire."""
    board = make_board(
        interval_s=10, keepalive_s=5, health_every_s=60, puback_timeout_s=10, spec={"clock_speed": 20}
    )
    board.start()
    wait_for(
        lambda: [m for m in probe.messages("health", board.device) if m.json()["uptime_s"] >= 300],
        90,
        "health after 5 virtual minutes",
    )
    health = [m.json() for m in probe.messages("health", board.device)]
    assert all(h["reconnects"] == 0 for h in health)
    assert [m.payload for m in probe.messages("status", board.device)] == [b"online"]
    seqs = seqs_of(probe.readings(board.device))
    assert seqs == list(range(len(seqs)))  # no gap and no repeat: nothing was retransmitted
    console = board.console()
    assert "link_down" not in console and "link_connect_failed" not in console


def test_a_broker_slow_to_answer_pings_is_given_the_keepalive_budget_a_real_board_gives_it(
    make_board: BoardFactory, probe: Probe, broker_url: str
) -> None:
    """Every PINGRESP 400 ms late (a loaded host): under 2.5 s, the keepalive / 2 the firmware waits,
    so a real ESP32 keeps its connection. With the clock 10x it was 4 s of board time and the board
    reconnected at its first ping (this test failed so: link_down, reconnects 1); now the board's
    clock runs at host speed while it waits for the broker (hil/virtual/vnet.py Clock.hold)."""
    host, port = broker_address(broker_url)
    with MqttProxy(host, port) as proxy:
        proxy.pingresp_delay_s = 0.4
        board = make_board(
            broker=f"mqtt://127.0.0.1:{proxy.port}",
            interval_s=10,
            keepalive_s=5,
            health_every_s=20,
            puback_timeout_s=10,
            spec={"clock_speed": 10},
        )
        board.start()
        wait_for(lambda: proxy.pingresps >= 4, 30, "4 late PINGRESPs")
        wait_for(
            lambda: [m for m in probe.messages("health", board.device) if m.json()["uptime_s"] >= 40],
            30,
            "health after 40 virtual seconds",
        )
        console = board.console()
    health = [m.json() for m in probe.messages("health", board.device)]
    assert "link_down" not in console, console[-2000:]
    assert [h["reconnects"] for h in health] == [0] * len(health)
    assert [m.payload for m in probe.messages("status", board.device)] == [b"online"]


def test_readings_leave_the_outbox_only_on_gateway_acks_and_online_never_touch_flash(
    make_board: BoardFactory, probe: Probe, tmp_path: Path
) -> None:
    """The real gateway (Kafka confirmed, then `sensors/{place}/{device}/ack`) releases readings."""
    from tests.gateway.conftest import GatewayFactory

    gateways = GatewayFactory(tmp_path)
    try:
        gateways()
        board = make_board(place=gateways.place, e2e_ack=True, ack_timeout_s=5, interval_s=0.3)
        board.start()
        wait_for(lambda: len(probe.readings(board.device)) >= 30, 40, "30 readings")
        health = wait_for(
            lambda: [h for h in health_of(probe, board.device) if h["outbox_depth"] <= 2],
            20,
            "health with the outbox empty but for the readings in flight",
        )[-1]
        assert health["outbox_flash"] == 0 and health["outbox_dropped"] == 0
        assert [n for n in board.flash.files("outbox.d") if n.endswith(".seg")] == []  # no reading in flash
        console = board.console()
        assert "ack_timeout" not in console and "ack_subscribe_refused" not in console
    finally:
        gateways.close()


def test_unacked_readings_go_to_flash_are_resent_and_released_once_a_gateway_acks(
    make_board: BoardFactory, probe: Probe, tmp_path: Path
) -> None:
    from tests.gateway.conftest import GatewayFactory

    gateways = GatewayFactory(tmp_path)
    try:
        board = make_board(place=gateways.place, e2e_ack=True, ack_timeout_s=1, interval_s=0.3)
        board.start()
        board.wait_console("ack_timeout", 20)
        wait_for(lambda: outbox_state(board)[1] >= 5, 20, "unacked readings kept in flash")
        # Re-sent with the same ids: the subscriber sees seq 0 more than once.
        wait_for(lambda: seqs_of(probe.readings(board.device)).count(0) >= 2, 20, "seq 0 re-sent")
        gateways()
        wait_for(lambda: outbox_state(board)[1] == 0, 40, "flash outbox released by the gateway's acks")
        seqs = set(seqs_of(probe.readings(board.device)))
        assert seqs == set(range(max(seqs) + 1))  # nothing lost on the way
    finally:
        gateways.close()


def _ack_timeouts(console: str) -> list[dict[str, int]]:
    """The board's ack_timeout events, oldest first: {"timeouts": N, "next_wait_ms": M}."""
    return [
        {k: int(v) for k, v in re.findall(r"(timeouts|next_wait_ms)=(\d+)", line)}
        for line in console.splitlines()
        if line.startswith("ack_timeout ")
    ]


def test_resends_without_acks_back_off_to_the_cap_and_an_ack_starts_the_wait_over(
    make_board: BoardFactory, probe: Probe, tmp_path: Path
) -> None:
    """No gateway acks: the board re-sends its window after ack_timeout_s, then after a wait that
    doubles (half of it random) up to ack_timeout_max_s. Before, it re-sent every ack_timeout_s for
    as long as acks stayed away (the soak's congestion collapse): seq 0 was re-sent 53 times in
    120 virtual seconds. The clock runs 10x; health's uptime is the board's time."""
    from tests.gateway.conftest import GatewayFactory

    timeout_s, cap_s, span_s = 2, 16, 120
    gateways = GatewayFactory(tmp_path)  # started only for the second half
    board = make_board(
        place=gateways.place,
        e2e_ack=True,
        ack_timeout_s=timeout_s,
        ack_timeout_max_s=cap_s,
        interval_s=10,
        health_every_s=5,
        spec={"clock_speed": 10},
    )
    board.start()
    health = wait_for(
        lambda: [h for h in health_of(probe, board.device) if h["uptime_s"] >= span_s],
        span_s,  # 12 s of real time at 10x, the rest margin for a loaded host
        f"health after {span_s} virtual seconds",
    )[0]
    resends = seqs_of(probe.readings(board.device)).count(0) - 1
    # The most timeouts the backoff allows: the first after ack_timeout_s, each next one after the
    # shortest wait the n-th step allows (its fixed half, never below ack_timeout_s), until the
    # board's uptime (+10 s: it ran on while the probe was read); and one re-send per reconnect.
    allowed, at = 0, timeout_s
    while at <= health["uptime_s"] + 10:
        allowed += 1
        at += max(timeout_s, min(timeout_s << allowed, cap_s) / 2)
    allowed += health["reconnects"]
    # Every ack_timeout_s (+1 s of loop granularity), as before, is ~40-55.
    assert 0 < resends <= allowed < span_s // (timeout_s + 1), (resends, allowed)
    waits = [e["next_wait_ms"] for e in _ack_timeouts(board.console())]
    assert waits and all(timeout_s * 1000 <= w <= cap_s * 1000 for w in waits), waits
    assert max(waits) >= cap_s * 1000 // 2  # it reached the cap: still re-sending, no more often
    try:
        gateways()
        board.wait_console("ack_backoff_reset", 60)
        wait_for(lambda: outbox_state(board)[1] == 0, 60, "flash outbox released by the gateway's acks")
    finally:
        gateways.close()
    # The gateway is gone again: the first timeout after the acks waits ack_timeout_s, not the cap.
    seen = len(_ack_timeouts(board.console()))
    after = wait_for(lambda: _ack_timeouts(board.console())[seen:], 60, "an ack timeout after the reset")
    assert after[0]["timeouts"] == 1 and after[0]["next_wait_ms"] <= 2 * timeout_s * 1000, after


def test_without_acks_a_full_ram_spills_to_flash_and_re_sends_only_on_ack_timeouts(
    make_board: BoardFactory, probe: Probe
) -> None:
    """A reading a second and no acks for 100 board-seconds, ack_timeout_s 60: the window (16) goes
    out once, then readings wait; every 17 readings RAM overflows and spills to flash. Only an ack
    timeout (or a reconnect) may send a reading again. Before, the spill rewound: the whole window
    went out again every ~17 s whatever the ack timeout, each round with fresh send times, so no
    ack timeout ever came (seq 0 sent 6 times, 80 re-sends, 0 timeouts; after: 2, 16, 1). The clock
    runs 10x; the console says when the board timed out or reconnected."""
    span_s, window = 100, 16
    board = make_board(
        e2e_ack=True, ack_timeout_s=60, ack_timeout_max_s=60, interval_s=1, health_every_s=5,
        spec={"clock_speed": 10},
    )
    board.start()
    wait_for(
        lambda: [h for h in health_of(probe, board.device) if h["uptime_s"] >= span_s],
        span_s,  # 10 s of real time at 10x, the rest margin for a loaded host
        f"health after {span_s} virtual seconds",
    )
    seqs = seqs_of(probe.readings(board.device))
    console = board.console()  # after the readings: every re-send they hold has its event in here
    rounds = len(_ack_timeouts(console)) + console.count("link_up ") - 1  # the first connect is no re-send
    counts = {s: seqs.count(s) for s in set(seqs)}
    seen = {"rounds": rounds, "seq 0 sent": counts.get(0), "re-sent": len(seqs) - len(counts)}
    print(seen)
    assert max(counts.values()) <= 1 + rounds, seen  # each re-send is a round's
    assert len(seqs) - len(counts) <= window * rounds, seen
    # The timeout at 60 s (+ a reconnect on a loaded host): the oldest reading waited its full time.
    assert 1 <= rounds <= 2, console[-3000:]
    assert outbox_state(board)[1] >= span_s - 2 * window  # the rest waits in flash, none dropped
    assert first_occurrences(seqs) == list(range(len(counts)))


def test_oversized_incoming_packet_is_dropped_unread_and_the_session_survives(
    make_board: BoardFactory, probe: Probe, broker_url: str
) -> None:
    """A 60 KB message (the shared broker takes up to 64 KB) on the board's ack topic: more than the
    board has free, so allocating it would be a MemoryError; the board reads it through in
    buffer-sized pieces, counts it, and goes on."""
    # A reading a second: the health after the ack sees at most the one or two measured since.
    board = make_board(e2e_ack=True, ack_timeout_s=60, interval_s=1)
    board.start()
    wait_for(lambda: len(probe.readings(board.device)) >= 3, 20, "3 readings")
    ack_topic = f"sensors/{board.place}/{board.device}/ack"
    operator = MqttLogin.from_env().at(broker_url)
    operator.publish(ack_topic, b"[" + b" " * 60_000 + b"]")
    wait_for(lambda: [h for h in health_of(probe, board.device) if h["oversized_in"] == 1], 20, "1 oversized")
    # A real ack afterwards still releases readings: the stream stayed in sync.
    operator.publish(ack_topic, json.dumps({"boot": 0, "ranges": [[0, 10_000]]}).encode())
    wait_for(lambda: [h for h in health_of(probe, board.device) if h["outbox_depth"] <= 2], 20, "acked")
    assert all(h["reconnects"] == 0 for h in health_of(probe, board.device))
    assert board.running and "link_down" not in board.console()


def test_slow_dns_is_looked_up_once_and_fed_around_so_the_watchdog_holds_across_reconnects(
    make_board: BoardFactory, probe: Probe
) -> None:
    """getaddrinfo has no timeout on the port: here each lookup takes 5 of the watchdog's 7 s. The
    firmware feeds right before it and caches the answer, so outages (reconnects) do not repeat it."""
    board = make_board(
        interval_s=0.3,
        watchdog_s=7,
        puback_timeout_s=0.5,
        publish_retries=0,
        spec={"dns_delay_ms": 5000},
        ntp_host="127.0.0.1",  # a 7 s watchdog is too short for the NTP sync's own lookup of a name
    )
    board.start()
    wait_for(lambda: probe.readings(board.device), 30, "a first reading")
    for n in range(2):
        board.cut_network()
        wait_for(lambda n=n: board.console().count("link_down") > n, 20, "the link lost")
        board.restore_network()
        wait_for(lambda n=n: board.console().count("link_up") > n + 1, 30, "the link back")
    console = board.console()
    assert console.count("dns_lookup") == 1
    assert "watchdog_reset" not in console and board.running

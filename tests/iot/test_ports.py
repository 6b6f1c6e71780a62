"""Free ports for the services tests start: never a port an outgoing connection can take, never the
same port to two callers.

The collision cases run in a network namespace of their own (`unshare`), whose ephemeral range the
test narrows to two ports: what happens there once in ~10 full runs (a private FerretDB found its
debug port taken between the pick and its bind) then happens every time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from iot.harness import ports
from iot.harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def in_own_netns(script: str, tmp: Path, window: str = "40000 40003") -> dict[str, Any]:
    """Run `script` (Python; it prints one JSON object last) in a new network namespace whose loopback
    is up and whose ephemeral range (net.ipv4.ip_local_port_range) is `window`; the port leases of
    that namespace are kept under `tmp`."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to give this test a network namespace of its own"
    prelude = textwrap.dedent(f"""
        import json, socket, subprocess, sys
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write("{window}")
        sys.path.insert(0, {str(REPO)!r})
    """)
    path = tmp / "script.py"
    path.write_text(prelude + textwrap.dedent(script))
    # -r maps our user to root in a user namespace of its own: the new namespace's sysctls are then
    # ours to set, whether we are root or not.
    done = subprocess.run(
        [unshare, "-rn", sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_kernels_pick_can_be_taken_by_an_outgoing_connection_and_ours_cannot(tmp_path: Path) -> None:
    """What free_ports did before (bind to port 0: the kernel picks from the ephemeral range, and the
    picker closes it again) hands out ports that the stack's clients' connections may take before
    the service binds them. Ours stay bindable while those connections hold the whole range."""
    got = in_own_netns(
        """
        from iot.harness import ports
        server = socket.create_server(("127.0.0.1", 20000))  # what the stack's clients connect to
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        kernels = sock.getsockname()[1]
        sock.close()
        ours = ports.free_ports(4)
        # Clients connect out: every port of the ephemeral range is a source port now.
        clients = [socket.create_connection(("127.0.0.1", 20000)) for _ in range(4)]
        sources = sorted(c.getsockname()[1] for c in clients)

        def binds(port):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
                return True

        print(json.dumps({"kernels": kernels, "sources": sources, "kernels_binds": binds(kernels),
                          "ours": ours, "ours_bind": [binds(p) for p in ours]}))
        """,
        tmp_path,
    )
    assert got["sources"] == [40000, 40001, 40002, 40003], got
    # The hazard, every time here: the kernel's pick is a client's source port before the bind.
    assert got["kernels"] in got["sources"] and got["kernels_binds"] is False, got
    assert got["ours_bind"] == [True] * 4, got
    assert len(set(got["ours"])) == 4 and all(28000 <= p < 40000 for p in got["ours"]), got


def test_free_ports_are_outside_the_ephemeral_range_and_nothing_holds_them() -> None:
    low, high = ports.ephemeral_range()
    picked = ports.free_ports(20)
    assert len(set(picked)) == 20
    assert not any(low <= p <= high for p in picked), (low, high, picked)
    assert all(ports.bindable(p) for p in picked)


def test_parallel_processes_and_threads_never_get_the_same_port(tmp_path: Path) -> None:
    """Four processes of three threads each take ports one at a time from a pool of exactly as many
    ports as they ask for: each port is handed out once (without the shared lock and leases some
    would come twice and the last callers find none)."""
    worker = f"""
import json, sys, threading
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from iot.harness import ports
picker = ports.PortPicker(Path({str(tmp_path / "pool.json")!r}), range(30000, 30120))
got = []
def take():
    for _ in range(10):
        got.extend(picker.take(1))
threads = [threading.Thread(target=take) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(got))
"""
    got = in_own_netns(
        f"""
        procs = [subprocess.Popen([sys.executable, "-c", {worker!r}], stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
        taken = []
        for p in procs:
            out, _ = p.communicate(timeout=50)
            assert p.returncode == 0
            taken.extend(json.loads(out))
        print(json.dumps({{"taken": taken}}))
        """,
        tmp_path,
    )
    assert sorted(got["taken"]) == list(range(30000, 30120)), sorted(got["taken"])


def test_a_port_in_use_is_skipped_and_a_leased_one_not_handed_out_again(tmp_path: Path) -> None:
    a, b, c = ports.free_ports(3)
    state = tmp_path / "state.json"
    with socket.create_server((ports.HOST, b)):  # a service listens on b
        assert ports.PortPicker(state, [a, b, c]).take(2) == [a, c]
        with pytest.raises(HarnessError, match=r"only 0 of 1 ports free .*leased"):
            ports.PortPicker(state, [a, b, c]).take(1)
    assert ports.PortPicker(state, [a, b, c]).take(1) == [b]  # its service stopped
    brief = tmp_path / "brief.json"  # leases that end at once: round the pool again
    assert ports.PortPicker(brief, [a, c], lease_s=0).take(2) == [a, c]
    assert ports.PortPicker(brief, [a, c], lease_s=0).take(1) == [a]


def test_no_room_outside_the_ephemeral_range_names_the_setting() -> None:
    with pytest.raises(HarnessError, match="ip_local_port_range"):
        ports.pool((1024, 65000))
    assert ports.pool((32768, 60999)) == range(ports.POOL_FLOOR, 32768)
    assert ports.pool((1024, 50000)) == range(50001, 65536)

"""node-exporter: the host's metrics for Prometheus."""

from __future__ import annotations

from iot.app.stack import probes
from iot.app.stack.services.service import Service

NODE_EXPORTER = Service(
    name="node-exporter",
    ports=lambda c: [c.node_exporter_port],
    argv=lambda c, _f: [
        "/usr/bin/prometheus-node-exporter",
        f"--web.listen-address={c.host}:{c.node_exporter_port}",
    ],
    marker="prometheus-node-exporter",
    prepare=lambda _c, f: f.mkdir(parents=True, exist_ok=True),
    probe=lambda c: probes.http_ok(f"http://{c.host}:{c.node_exporter_port}/metrics", expect=b"node_"),
)

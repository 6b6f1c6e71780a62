"""The harness: how the demo, the rig, the benchmarks and the tests run the product and check it.

The layers run one way (tests/test_layers.py checks it):

    kernel   iot/*.py       contract, errors, env, log, topics, pins, heap: imports nothing of ours
    harness  iot/harness/   imports the kernel only; it drives the product through its `iot` command
    product  gateway/, backend/, hil/ (boards), iot/app/ (the `iot` command, stack, demo)
    users    hil/rig/, bench/, tests/

The harness knows nothing of the gateway's or the backend's code: it starts them as users do
(`iot gateway`, `iot backend`, `iot stack up`), through the one launcher, and judges them by what
they publish (metrics, Kafka, MongoDB) against its own oracle.

- `children`: the one launcher of child processes (ready with a deadline, dies with its parent,
  SIGTERM then SIGKILL, log tail, RSS and CPU);
- `supervisor`: children started again when they exit, with the reason logged (what `iot demo` runs);
- `ports`: free ports (outside the ephemeral range, leased across processes) and whether something
  listens;
- `metrics`: scraping a Prometheus text endpoint;
- `broker`: a private Mosquitto a test, benchmark or rig may stop, kill or reconfigure;
- `stack`: private native stacks (a Kafka, a FerretDB of their own), through `iot stack`;
- `kafka`: where a topic ends, and a consumer group that starts there;
- `payloads`: payload v1 readings;
- `oracle`: the windows the backend must produce, computed independently of backend/.
"""

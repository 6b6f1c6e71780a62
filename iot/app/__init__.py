"""The application: the `iot` command, the native stack, the demo and the process supervisor.

It sits on the kernel (`iot.contract`, `iot.errors`, `iot.env`, `iot.log`, `iot.topics`), which the
gateway, backend, rig and firmware tooling import; nothing in the kernel imports from here.
"""

"""The application: the `iot` command, the native stack and the demo.

It sits on the kernel (`iot.contract`, `iot.errors`, `iot.env`, `iot.log`, `iot.topics`) and the
harness (`iot.harness`: the demo's child processes), and assembles the gateway, the backend and the
boards into one command; nothing below it imports from here (README, "Layout").
"""

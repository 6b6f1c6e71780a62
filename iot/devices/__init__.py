"""Provisioned boards: their broker accounts (iot.broker), the device registry in MongoDB, the board
configs `iot flash` takes, and the `iot devices` command."""

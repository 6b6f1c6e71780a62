"""backend/transport.py's correction 4: under uvloop, a request written to a connection whose transport
is already closed (Kafka SIGKILLed, aiokafka not yet told) is a KafkaConnectionError that every caller
retries, not a RuntimeError that killed the consumer's metadata task and stopped the worker for good
(aiokafka issue 1038; the short soak after its Kafka kill)."""

from __future__ import annotations

import pytest
import uvloop
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

from backend import transport

from .conftest import KAFKA

pytestmark = pytest.mark.integration


def test_a_request_on_a_connection_whose_transport_closed_is_a_connection_error() -> None:
    transport.correct_aiokafka_connections()
    host, port = KAFKA.rsplit(":", 1)

    async def go() -> tuple[type[BaseException], bool]:
        conn = await create_conn(host, int(port))
        assert (await conn.send(MetadataRequest([]))).brokers  # a working connection first
        # The window a Kafka SIGKILL opens: the transport is closed (connection_lost ran) and aiokafka's
        # reader task has not closed the connection yet. Its reader is stopped to hold that state.
        conn._read_task.cancel()
        conn._writer.transport.close()
        await conn._closed_fut
        try:
            conn.send(MetadataRequest([]))
        except Exception as exc:
            return type(exc), conn.connected()
        finally:
            conn.close()
        raise AssertionError("the write to a closed transport raised nothing")

    raised, still_connected = uvloop.run(go())
    assert raised is KafkaConnectionError
    assert not still_connected  # closed as aiokafka's own OSError path does: the next request reconnects

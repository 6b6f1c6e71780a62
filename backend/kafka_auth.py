"""The backend's Faust (aiokafka) clients on the shared Kafka connection config: Faust takes TLS and
SASL as its `broker_credentials`, which its aiokafka driver hands to every client it makes (consumer,
producer, topic admin)."""

from __future__ import annotations

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from iot.kafka import KafkaConnection

__all__ = ["faust_broker", "faust_credentials"]


def faust_broker(conn: KafkaConnection) -> str:
    """Faust's broker URL: `kafka://host:port;host:port`."""
    return "kafka://" + conn.bootstrap.replace(",", ";")


def faust_credentials(conn: KafkaConnection) -> CredentialsT | None:
    """None for PLAINTEXT; TLS (SSL), SASL over TLS (SASL_SSL) or SASL alone (SASL_PLAINTEXT)."""
    context = conn.ssl_context()
    if conn.sasl:
        password = conn.sasl_password.reveal() if conn.sasl_password is not None else None
        # With a context Faust makes it SASL_SSL, without one SASL_PLAINTEXT: as the protocol says.
        return SASLCredentials(
            username=conn.sasl_username, password=password, ssl_context=context, mechanism=conn.sasl_mechanism
        )
    if context is not None:
        return SSLCredentials(context)
    return None

"""One Kafka connection config for every client: the bootstrap list and its security (TLS, SASL).

Every Kafka client of the product is built from a `KafkaConnection`: the gateway's producer, the
backend's (Faust's aiokafka clients through `backend/kafka_auth.py`, and its librdkafka producer),
topic admin (`iot.topics`), the stack's probes, the rig's reader, the soak and the benchmarks. It is
read from these variables (`VARIABLES`, listed by each command's `--help`):

    IOT_KAFKA_BOOTSTRAP                  host:port[,host:port...]
    IOT_KAFKA_SECURITY_PROTOCOL          PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
    IOT_KAFKA_SASL_MECHANISM             PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (with SASL_*)
    IOT_KAFKA_SASL_USERNAME / _PASSWORD  the SASL user (with SASL_*)
    IOT_KAFKA_SSL_CA_LOCATION            the CA that verifies the brokers (unset: the system's CAs)
    IOT_KAFKA_SSL_CERTIFICATE_LOCATION   a client certificate (mutual TLS), with
    IOT_KAFKA_SSL_KEY_LOCATION           its private key and
    IOT_KAFKA_SSL_KEY_PASSWORD           that key's password, if it has one

Everything that can be checked without a broker is checked when the settings are read: a mechanism
the clients do not speak, SASL settings on a PLAINTEXT connection, a CA file that holds no
certificate. What only the broker can say (a wrong password, a certificate it does not trust) comes
back from the first connection as a `KafkaAuthError` (`classify`), which names the variables.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from iot.env import CONTRACT, EnvReader, Secret, Var, Variables
from iot.errors import ConfigError

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "VARIABLES",
    "KafkaAuthError",
    "KafkaConnection",
    "classify_auth",
]

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# What both client libraries speak with a user and a password (librdkafka and aiokafka); GSSAPI and
# OAUTHBEARER need more than these variables carry.
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

VARIABLES: Final = Variables(
    CONTRACT.pick("IOT_KAFKA_BOOTSTRAP"),
    Var("IOT_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", ", ".join(SECURITY_PROTOCOLS)),
    Var("IOT_KAFKA_SASL_MECHANISM", None, f"with SASL_*: {', '.join(SASL_MECHANISMS)}"),
    Var("IOT_KAFKA_SASL_USERNAME", None, "with SASL_*: the user"),
    Var("IOT_KAFKA_SASL_PASSWORD", None, "with SASL_*: its password", secret=True),
    Var(
        "IOT_KAFKA_SSL_CA_LOCATION",
        None,
        "with SSL/SASL_SSL: CA file (PEM) that verifies the brokers",
        shown="the system's CAs",
    ),
    Var(
        "IOT_KAFKA_SSL_CERTIFICATE_LOCATION",
        None,
        "with SSL/SASL_SSL: client certificate (PEM), for mutual TLS",
    ),
    Var("IOT_KAFKA_SSL_KEY_LOCATION", None, "the client certificate's private key (PEM)"),
    Var("IOT_KAFKA_SSL_KEY_PASSWORD", None, "that key's password", secret=True),
)

_SASL: Final = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS: Final = ("SSL", "SASL_SSL")


class KafkaAuthError(ConfigError):
    """The brokers refused this client's credentials or TLS: a setting is wrong (named)."""


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_key_password: Secret | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, error: type[ConfigError] = ConfigError
    ) -> KafkaConnection:
        return cls.read(VARIABLES.reader(env, error))

    @classmethod
    def read(cls, reader: EnvReader) -> KafkaConnection:
        """From a command's reader (its declarations must include `VARIABLES`)."""
        bootstrap = reader.bootstrap("IOT_KAFKA_BOOTSTRAP")
        protocol = reader.choice("IOT_KAFKA_SECURITY_PROTOCOL", SECURITY_PROTOCOLS)
        sasl = {
            name: reader.optional(name)
            for name in ("IOT_KAFKA_SASL_MECHANISM", "IOT_KAFKA_SASL_USERNAME", "IOT_KAFKA_SASL_PASSWORD")
        }
        mechanism: str | None = None
        if sasl["IOT_KAFKA_SASL_MECHANISM"] is not None:
            mechanism = reader.choice("IOT_KAFKA_SASL_MECHANISM", SASL_MECHANISMS)
        # Each value on its own first (a missing file names its variable), then how they combine.
        key_password = reader.secret("IOT_KAFKA_SSL_KEY_PASSWORD")
        ca = reader.ca_file("IOT_KAFKA_SSL_CA_LOCATION")
        cert, key = reader.cert_and_key(
            "IOT_KAFKA_SSL_CERTIFICATE_LOCATION",
            "IOT_KAFKA_SSL_KEY_LOCATION",
            key_password,
            "IOT_KAFKA_SSL_KEY_PASSWORD",
        )
        if protocol in _SASL:
            for name, value in sasl.items():
                if value is None:
                    raise reader.fail(name, f"is required with IOT_KAFKA_SECURITY_PROTOCOL={protocol}")
        else:
            given = [name for name, value in sasl.items() if value is not None]
            if given:
                raise reader.fail(
                    "IOT_KAFKA_SECURITY_PROTOCOL",
                    f"{protocol} does not use {', '.join(given)}: set SASL_SSL (or SASL_PLAINTEXT)",
                )
        if protocol not in _TLS:
            tls_given = {
                "IOT_KAFKA_SSL_CA_LOCATION": ca,
                "IOT_KAFKA_SSL_CERTIFICATE_LOCATION": cert,
                "IOT_KAFKA_SSL_KEY_PASSWORD": key_password,
            }
            given = [name for name, value in tls_given.items() if value is not None]
            if given:
                raise reader.fail(
                    "IOT_KAFKA_SECURITY_PROTOCOL",
                    f"{protocol} does not use {', '.join(given)}: set SSL or SASL_SSL",
                )
        return cls(
            bootstrap=bootstrap,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=sasl["IOT_KAFKA_SASL_USERNAME"],
            sasl_password=reader.secret("IOT_KAFKA_SASL_PASSWORD"),
            ssl_ca=ca,
            ssl_cert=cert,
            ssl_key=key,
            ssl_key_password=key_password,
        )

    @property
    def sasl(self) -> bool:
        return self.security_protocol in _SASL

    @property
    def tls(self) -> bool:
        return self.security_protocol in _TLS

    def librdkafka(self) -> dict[str, str]:
        """The confluent-kafka (librdkafka) client settings: secrets revealed, never log the result."""
        config = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": _reveal(self.sasl_password),
            "ssl.ca.location": self.ssl_ca,
            "ssl.certificate.location": self.ssl_cert,
            "ssl.key.location": self.ssl_key,
            "ssl.key.password": _reveal(self.ssl_key_password),
        }
        config.update({name: value for name, value in optional.items() if value is not None})
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for Python clients (aiokafka through Faust); None without TLS. It verifies
        the brokers' certificates and host names, as librdkafka does by default."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca)
        if self.ssl_cert is not None:
            # "" rather than None: OpenSSL would otherwise ask for a pass phrase on the terminal.
            context.load_cert_chain(self.ssl_cert, self.ssl_key, _reveal(self.ssl_key_password) or "")
        return context

    def env(self) -> dict[str, str]:
        """The variables that give a child process this connection (secrets revealed: for its
        environment only)."""
        out = {"IOT_KAFKA_BOOTSTRAP": self.bootstrap, "IOT_KAFKA_SECURITY_PROTOCOL": self.security_protocol}
        optional = {
            "IOT_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "IOT_KAFKA_SASL_USERNAME": self.sasl_username,
            "IOT_KAFKA_SASL_PASSWORD": _reveal(self.sasl_password),
            "IOT_KAFKA_SSL_CA_LOCATION": self.ssl_ca,
            "IOT_KAFKA_SSL_CERTIFICATE_LOCATION": self.ssl_cert,
            "IOT_KAFKA_SSL_KEY_LOCATION": self.ssl_key,
            "IOT_KAFKA_SSL_KEY_PASSWORD": _reveal(self.ssl_key_password),
        }
        out.update({name: value for name, value in optional.items() if value is not None})
        return out

    def describe(self) -> str:
        """For logs: where and how, never a secret (`SASL_SSL 127.0.0.1:9094 SCRAM-SHA-512 user=gw`)."""
        parts = [self.security_protocol, self.bootstrap]
        if self.sasl:
            parts += [str(self.sasl_mechanism), f"user={self.sasl_username}"]
        if self.ssl_cert:
            parts.append(f"cert={self.ssl_cert}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"KafkaConnection({self.describe()})"


# librdkafka's error codes (confluent_kafka.KafkaError) for a refused login or TLS handshake; numbers
# here so the kernel need not import the client to classify an error it was handed.
_AUTHENTICATION: Final = -169  # KafkaError._AUTHENTICATION (SASL or TLS handshake refused)
_SSL: Final = -181  # KafkaError._SSL
_SASL_AUTHENTICATION_FAILED: Final = 58  # KafkaError.SASL_AUTHENTICATION_FAILED (broker's answer)


def classify_auth(conn: KafkaConnection, code: int, detail: str) -> KafkaAuthError | None:
    """The configuration error behind a librdkafka error, or None when it is not one: a refused
    login names the SASL variables, a failed TLS handshake the CA (or the client certificate)."""
    text = detail.lower()
    # (not just "sasl": a broker is named sasl_ssl://host:port in every message of that listener)
    if code == _SASL_AUTHENTICATION_FAILED or (code == _AUTHENTICATION and "sasl authentication" in text):
        return KafkaAuthError(
            "IOT_KAFKA_SASL_PASSWORD",
            f"Kafka at {conn.bootstrap} refused IOT_KAFKA_SASL_USERNAME={conn.sasl_username} "
            f"({conn.sasl_mechanism}): check that user and its password ({_short(detail)})",
        )
    if "plaintext broker listener" in text:
        return KafkaAuthError(
            "IOT_KAFKA_SECURITY_PROTOCOL",
            f"{conn.bootstrap} is a PLAINTEXT listener, this client speaks {conn.security_protocol}: "
            f"fix IOT_KAFKA_BOOTSTRAP or IOT_KAFKA_SECURITY_PROTOCOL ({_short(detail)})",
        )
    if (
        code in (_AUTHENTICATION, _SSL)
        or "ssl handshake failed" in text
        or "certificate verify failed" in text
    ):
        if "certificate verify failed" in text or "unable to get local issuer" in text:
            return KafkaAuthError(
                "IOT_KAFKA_SSL_CA_LOCATION",
                f"the certificate of Kafka at {conn.bootstrap} does not verify against "
                f"{conn.ssl_ca or 'the system CAs'} ({_short(detail)})",
            )
        if conn.security_protocol not in _TLS:
            return KafkaAuthError(
                "IOT_KAFKA_SECURITY_PROTOCOL",
                f"Kafka at {conn.bootstrap} closed a {conn.security_protocol} connection during its "
                f"handshake: is that a TLS or SASL listener? ({_short(detail)})",
            )
        return KafkaAuthError(
            "IOT_KAFKA_SSL_CA_LOCATION",
            f"TLS with Kafka at {conn.bootstrap} failed: check the CA and client certificate "
            f"({_short(detail)})",
        )
    return None


def _reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()


def _short(detail: str) -> str:
    return " ".join(detail.split())[:240]

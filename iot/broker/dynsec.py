"""Mosquitto's dynamic-security plugin driven over MQTT: the control topic, as an admin account.

A command is a JSON object `{"command": NAME, ...}`; several go in one message to
`$CONTROL/dynamic-security/v1`, and the plugin answers all of them in one message on
`…/v1/response`, each answer carrying the `correlationData` of its command and an `error` text when it
failed. This is what `mosquitto_ctrl dynsec` sends; speaking it here keeps passwords off command
lines and lets one connection carry a whole provisioning run.

What the plugin does with them (read in the 2.0.11 and 2.0.20 sources, checked on the broker by
tests/broker): every changing command rewrites the whole JSON file before it returns (so a command
costs more as the file grows: ~70 ms at 2,000 devices on this machine), and deleting or disabling a
client, changing its password, client id or roles, or changing a role's ACLs disconnects the
clients concerned at once, without their last will.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from iot.broker.credentials import Credentials
from iot.broker.errors import BrokerAuthError, BrokerError, DynsecError
from iot.env import MqttEndpoint

__all__ = ["CONTROL_TOPIC", "Dynsec", "connect"]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# CONNACK reasons that mean "these credentials are not accepted" (MQTT v5 codes; paho maps a v3.1.1
# refusal onto them too).
_AUTH_REFUSALS = frozenset({134, 135})  # bad user name or password, not authorized
# The plugin saves its file once per changing command; a batch waits for each save.
_PER_COMMAND_S = 0.5


def connect(
    endpoint: MqttEndpoint,
    login: Credentials | None,
    tls_ca: str | None = None,
    client_id: str = "",
    timeout: float = 10.0,
    clean_start: bool = True,
) -> mqtt.Client:
    """A connected MQTT v5 client (network loop running) for `login` on the broker. Raises
    BrokerAuthError when the broker refuses the credentials, BrokerError when it cannot be reached."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if endpoint.tls or tls_ca:
        client.tls_set_context(ssl.create_default_context(cafile=tls_ca))
    if login is not None:
        client.username_pw_set(login.username, login.password)
    answered = threading.Event()
    result: list[ReasonCode] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        result.append(reason)
        if reason.is_failure:
            c.disconnect()  # ends the network loop now instead of after a reconnect delay
        answered.set()

    client.on_connect = on_connect
    who = f"as {login.username!r}" if login is not None else "without credentials"
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=30, clean_start=clean_start)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot reach the broker at {endpoint.url}: {exc}") from None
    client.loop_start()
    if not answered.wait(timeout):
        client.loop_stop()
        raise BrokerError(f"no CONNACK from {endpoint.url} within {timeout:.0f}s")
    reason = result[0]
    if reason.is_failure:
        client.loop_stop()
        if reason.value in _AUTH_REFUSALS:
            raise BrokerAuthError(f"the broker at {endpoint.url} refused the login {who}: {reason}")
        raise BrokerError(f"the broker at {endpoint.url} refused the connection {who}: {reason}")
    return client


class Dynsec:
    """A session on the plugin's control topic. Use as a context manager, or `open()`/`close()`."""

    def __init__(
        self, endpoint: MqttEndpoint, login: Credentials, tls_ca: str | None = None, timeout: float = 10.0
    ) -> None:
        self.endpoint = endpoint
        self._login = login
        self._tls_ca = tls_ca
        self._timeout = timeout
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._answers: dict[str, dict[str, Any]] = {}
        self._arrived = threading.Condition(self._lock)

    @property
    def username(self) -> str:
        return self._login.username

    def open(self) -> Dynsec:
        client = connect(
            self.endpoint, self._login, self._tls_ca, f"iot-admin-{uuid.uuid4().hex[:12]}", self._timeout
        )
        subscribed = threading.Event()
        granted: list[ReasonCode] = []

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
            granted.extend(reasons)
            subscribed.set()

        client.on_subscribe = on_subscribe
        client.on_message = self._on_message
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(self._timeout) or not granted or granted[0].is_failure:
            client.disconnect()
            client.loop_stop()
            raise BrokerAuthError(
                f"{self._login.username!r} may not read {RESPONSE_TOPIC} on {self.endpoint.url}: it is not "
                "the broker's dynamic-security admin (the operator account)"
            )
        self._client = client
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Dynsec:
        return self.open()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            answers = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._arrived:
            for answer in answers if isinstance(answers, list) else []:
                if isinstance(answer, dict) and isinstance(answer.get("correlationData"), str):
                    self._answers[answer["correlationData"]] = answer
            self._arrived.notify_all()

    def execute(self, commands: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send the commands in one message; their answers in the same order (an answer with an
        `error` key failed; the others still ran)."""
        if self._client is None:
            raise BrokerError("the dynamic-security session is not open")
        tagged = [{**command, "correlationData": uuid.uuid4().hex} for command in commands]
        if not tagged:
            return []
        info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        deadline = time.monotonic() + self._timeout + _PER_COMMAND_S * len(tagged)
        wanted = [c["correlationData"] for c in tagged]
        with self._arrived:
            while not all(w in self._answers for w in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = next(c["command"] for c in tagged if c["correlationData"] not in self._answers)
                    published = "published" if info.is_published() else "not even acknowledged by the broker"
                    raise BrokerError(
                        f"no answer to {missing} from the dynamic-security plugin on {self.endpoint.url} "
                        f"(the command was {published}); is the plugin loaded?"
                    )
                self._arrived.wait(left)
            return [self._answers.pop(w) for w in wanted]

    def run(self, *commands: Mapping[str, Any]) -> list[dict[str, Any]]:
        """`execute`, raising DynsecError for the first command that failed."""
        answers = self.execute(commands)
        for command, answer in zip(commands, answers, strict=True):
            if "error" in answer:
                raise DynsecError(str(command["command"]), str(answer["error"]), _subject(command))
        return answers

    def call(self, command: str, **fields: Any) -> dict[str, Any]:
        """One command; its `data` (empty when it has none). Raises DynsecError."""
        (answer,) = self.run({"command": command, **fields})
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    def execute_then_reconnect(self, command: Mapping[str, Any]) -> None:
        """Run a command that disconnects this very session (the plugin disconnects every client of
        an account whose roles change, the admin's own too), then log in again. Its answer may be
        lost with the connection: the caller checks the outcome."""
        if self._client is None:
            raise BrokerError("the dynamic-security session is not open")
        gone = threading.Event()
        self._client.on_disconnect = lambda *_a: gone.set()
        tag = uuid.uuid4().hex
        message = json.dumps({"commands": [{**command, "correlationData": tag}]})
        self._client.publish(CONTROL_TOPIC, message, qos=1)
        deadline = time.monotonic() + self._timeout + _PER_COMMAND_S
        with self._arrived:
            while tag not in self._answers and not gone.is_set() and time.monotonic() < deadline:
                self._arrived.wait(0.05)
            answer = self._answers.pop(tag, None)
        self.close()
        self.open()
        if answer is not None and "error" in answer:
            raise DynsecError(str(command["command"]), str(answer["error"]), _subject(command))

    # --- look-ups that answer None for "not there" instead of raising -----------------------

    def get_client(self, username: str) -> dict[str, Any] | None:
        (answer,) = self.execute([{"command": "getClient", "username": username}])
        return _found(answer, "client")

    def get_role(self, rolename: str) -> dict[str, Any] | None:
        (answer,) = self.execute([{"command": "getRole", "rolename": rolename}])
        return _found(answer, "role")

    def list_clients(self) -> list[dict[str, Any]]:
        """Every client with its client id and roles."""
        clients = self.call("listClients", verbose=True).get("clients", [])
        return [c for c in clients if isinstance(c, dict)]

    def list_roles(self) -> list[dict[str, Any]]:
        """Every role with its ACLs."""
        roles = self.call("listRoles", verbose=True).get("roles", [])
        return [r for r in roles if isinstance(r, dict)]

    # --- publishing as the admin -----------------------------------------------------------

    def clear_retained(self, topics: Iterable[str]) -> None:
        """Delete the retained message of each topic (an empty retained publish, QoS 1). Raises
        BrokerError when the broker refuses one (the account may not write there)."""
        if self._client is None:
            raise BrokerError("the dynamic-security session is not open")
        reasons: dict[int, ReasonCode] = {}
        done = threading.Condition()

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            with done:
                reasons[mid] = reason
                done.notify_all()

        self._client.on_publish = on_publish
        sent = {self._client.publish(topic, b"", qos=1, retain=True).mid: topic for topic in topics}
        deadline = time.monotonic() + self._timeout
        with done:
            while not all(mid in reasons for mid in sent):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(
                        f"no PUBACK from {self.endpoint.url} for clearing {sorted(sent.values())}"
                    )
                done.wait(left)
        refused = [f"{sent[mid]} ({reasons[mid]})" for mid in sent if reasons[mid].is_failure]
        if refused:
            raise BrokerError(f"the broker refused {self.username!r} clearing {', '.join(refused)}")


def _found(answer: dict[str, Any], key: str) -> dict[str, Any] | None:
    if "error" in answer:
        if "not found" in str(answer["error"]).lower():
            return None
        raise DynsecError(str(answer.get("command")), str(answer["error"]))
    value = (answer.get("data") or {}).get(key)
    return value if isinstance(value, dict) else None


def _subject(command: Mapping[str, Any]) -> str:
    for key in ("username", "rolename", "groupname"):
        if key in command:
            return f"{key} {command[key]!r}"
    return ""

"""gate's MQTT connection: availability with a last will, commands that never arrive late.

Commands are published with QoS 1 and never retained, only while connected
and before they expire. A command not acknowledged in time is withdrawn from
the client's outgoing queue so that a reconnect cannot send it late; the
payload also carries ``expires_at`` for the controller to check, and a short
keepalive drops a frozen broker. Retained messages reach a handler only if it
asks for them, and a message reaches a handler only on the topics it asked for.
A refused login or a TLS failure is logged as such and kept in
:attr:`MqttLink.problem`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from functools import cache

from gate.config import MqttConfig
from gate.errors import ConfigError

logger = logging.getLogger("gate.mqtt")

MessageHandler = Callable[[str, bytes], None]
Credentials = tuple[str, str | None]


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The TLS settings of ``[mqtt]``: CA, client certificate and key, lowest version."""
    try:
        context = ssl.create_default_context(
            cafile=str(config.ca_certs) if config.ca_certs else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[mqtt] ca_certs {config.ca_certs}: cannot load it: {exc}") from None
    context.minimum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[
        config.tls_version
    ]
    if config.certfile is not None:
        try:
            context.load_cert_chain(
                str(config.certfile),
                str(config.keyfile) if config.keyfile else None,
                password=lambda: b"",  # never a prompt: an encrypted key fails here
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"[mqtt] certfile {config.certfile}"
                + (f", keyfile {config.keyfile}" if config.keyfile else "")
                + f": cannot load them ({exc}); the key must be unencrypted and match"
            ) from None
    return context


@cache
def _client_class():
    """paho's client, telling why a connection attempt failed (paho only says that it did)."""
    import paho.mqtt.client as mqtt

    class Client(mqtt.Client):
        on_attempt_failed: Callable[[OSError], None] | None = None

        def reconnect(self):
            try:
                return super().reconnect()
            except OSError as exc:
                if self.on_attempt_failed is not None:
                    self.on_attempt_failed(exc)
                raise

    return Client


def make_client(config: MqttConfig, client_id: str, credentials: Credentials | None = None):
    """A paho client (callback API v2, MQTT 3.1.1, clean session) with ``[mqtt]``'s login and TLS.

    ``credentials`` replace ``username`` and ``password`` (the embedded broker's own).
    """
    import paho.mqtt.client as mqtt

    client = _client_class()(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if credentials is None and config.username:
        password = config.password.get_secret_value() if config.password else None
        credentials = (config.username, password)
    if credentials is not None:
        client.username_pw_set(*credentials)
    if config.tls:
        client.tls_set_context(tls_context(config))
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def describe_failure(exc: OSError, host: str, port: int) -> tuple[str, bool]:
    """What a failed connection attempt means, and whether trying again can help."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = f"the broker's certificate is not trusted: {reason} (see [mqtt] ca_certs)"
        return f"MQTT TLS with {host}:{port} failed: {reason}", True
    return f"MQTT broker {host}:{port} not reachable: {exc.strerror or exc}", False


class MqttLink:
    """One paho client (callback API v2) shared by everything that talks MQTT."""

    def __init__(
        self,
        config: MqttConfig,
        host: str,
        port: int,
        *,
        credentials: Credentials | None = None,
        client_id: str | None = None,
        speaks_for_gate: bool = True,
    ):
        """``speaks_for_gate`` False (the CLI beside a running gate): no availability, no will."""
        import paho.mqtt.client as mqtt

        self.config = config
        self.host, self.port = host, port
        self.prefix = config.topic_prefix.rstrip("/")
        self.availability_topic = f"{self.prefix}/status"
        #: why the last connection attempt failed; None once connected
        self.problem: str | None = None
        self._connected = threading.Event()
        self._refused = threading.Event()  # a refused login or a TLS failure: waiting is vain
        self._stopping = False
        self._handlers: dict[str, tuple[Callable, bool]] = {}
        self._on_connected: list[Callable[[], None]] = []
        self.speaks_for_gate = speaks_for_gate
        self._doors_available: dict[str, bool] = {}
        self._last_sent = None  # the last message published, for stop() to wait on
        client = make_client(config, client_id or config.client_id, credentials)
        if speaks_for_gate:
            client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_attempt_failed = self._on_attempt_failed
        client.on_log = self._on_log
        self._log_error = mqtt.MQTT_LOG_ERR
        self._client = client
        remote = host not in ("127.0.0.1", "::1", "localhost")
        if config.password is not None and not config.tls and credentials is None and remote:
            logger.warning("[mqtt] tls = false: the MQTT password goes to %s in plain text", host)

    # connection -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; reconnects by itself for as long as it runs."""
        self._client.connect_async(self.host, self.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds pass."""
        return self._connected.wait(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Like :meth:`wait_connected`, but give up at once on a refused login or a TLS failure."""
        deadline = time.monotonic() + timeout
        while not self._refused.is_set():
            left = deadline - time.monotonic()
            if self._connected.wait(min(0.05, max(left, 0.0))):
                return True
            if left <= 0:
                return False
        return self.connected

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Say ``offline`` (retained, gate and its doors), disconnect and end the network thread."""
        self._stopping = True
        info = self._last_sent  # messages go out in order: once it is acknowledged, all are
        if self.connected and self.speaks_for_gate:
            for door in list(self._doors_available):
                topic = self.topic(door, "availability")
                self._client.publish(topic, "offline", qos=1, retain=True)
            info = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
        if self.connected and info is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=self.config.ack_timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def _failed(self, problem: str, definite: bool) -> None:
        """Keep and log (once per new problem) why the connection failed."""
        if problem != self.problem:
            (logger.error if definite else logger.warning)("%s", problem)
        self.problem = problem
        if definite:
            self._refused.set()

    def _on_attempt_failed(self, exc: OSError) -> None:
        if not self._stopping:
            self._failed(*describe_failure(exc, self.host, self.port))

    def _on_log(self, client, userdata, level, message: str) -> None:
        # a broker refusing our certificate (TLS 1.3) shows only when the first read fails
        if level != self._log_error or "[SSL" not in message or self.connected:
            return
        reason = message.split("] ", 1)[-1].split(" (_ssl", 1)[0]
        if "alert" in reason and ("certificate" in reason or "unknown ca" in reason):
            reason = (
                f"the broker refused gate's client certificate: {reason} "
                "(see [mqtt] certfile and keyfile)"
            )
        self._failed(f"MQTT TLS with {self.host}:{self.port} failed: {reason}", True)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = ""
            if reason_code.getName() in ("Bad user name or password", "Not authorized"):
                hint = " (check [mqtt] username and password)"
            self._failed(
                f"MQTT broker {self.host}:{self.port} refused gate's login: {reason_code}{hint}",
                True,
            )
            return
        logger.info("MQTT connected to %s:%s", self.host, self.port)
        self.problem = None
        self._refused.clear()
        if self.speaks_for_gate:
            client.publish(self.availability_topic, "online", qos=1, retain=True)
            for door, available in list(self._doors_available.items()):
                state = "online" if available else "offline"
                client.publish(self.topic(door, "availability"), state, qos=1, retain=True)
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        self._connected.set()
        for callback in self._on_connected:
            try:
                callback()
            except Exception:
                logger.exception("MQTT on-connect callback failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stopping:
            logger.warning("MQTT connection lost (%s); reconnecting", reason_code)
        self._connected.clear()

    # messages ---------------------------------------------------------------

    def topic(self, door: str, leaf: str) -> str:
        """``<prefix>/<door>/<leaf>``."""
        return f"{self.prefix}/{door}/{leaf}"

    def door_available(self, door: str, available: bool | None) -> None:
        """``<prefix>/<door>/availability``: ``online`` while the door's camera gives frames
        (retained, again after each reconnection); None clears it (a door removed)."""
        if not self.speaks_for_gate:
            return
        if available is None:
            self._doors_available.pop(door, None)
            self.publish(self.topic(door, "availability"), "", qos=1, retain=True)
            return
        if self._doors_available.get(door) is available:
            return
        self._doors_available[door] = available
        state = "online" if available else "offline"
        self.publish(self.topic(door, "availability"), state, qos=1, retain=True)

    def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Fire and forget while connected; False when there is no connection."""
        if not self.connected:
            return False
        self._last_sent = self._client.publish(topic, payload, qos=qos, retain=retain)
        return self._last_sent.rc == 0

    def publish_command(self, topic: str, payload: str, expires_at: float) -> bool:
        """Publish a command (QoS 1, not retained); True only when acknowledged before expiry."""
        now = time.time()
        if not self.connected or now >= expires_at:
            return False
        info = self._client.publish(topic, payload, qos=1, retain=False)
        if info.rc != 0:
            self._withdraw(info.mid)
            return False
        deadline = min(expires_at, now + self.config.ack_timeout_s)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=max(0.0, deadline - time.time()))
        if info.is_published() and time.time() < expires_at:
            return True
        self._withdraw(info.mid)
        return False

    def _withdraw(self, mid: int) -> None:
        """Drop an unacknowledged message so no reconnect re-sends it (paho keeps it otherwise)."""
        client = self._client
        lock = getattr(client, "_out_message_mutex", None)
        messages = getattr(client, "_out_messages", None)
        if lock is None or messages is None:
            return
        with lock:
            if messages.pop(mid, None) is not None and getattr(client, "_inflight_messages", 0):
                client._inflight_messages -= 1

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every (re)connection, and now if connected."""
        self._on_connected.append(callback)
        if self.connected:
            callback()

    def subscribe(self, topic: str, handler: Callable, *, raw: bool = False) -> None:
        """Call ``handler(topic, payload)`` for messages on ``topic`` (kept across reconnects).

        Retained messages are dropped, unless ``raw``: then ``handler(message)``
        gets every paho message, ``retain`` flag included, and decides.
        """
        self._handlers[topic] = (handler, raw)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        import paho.mqtt.client as mqtt

        for pattern, (handler, raw) in self._handlers.items():
            if not mqtt.topic_matches_sub(pattern, message.topic):
                continue
            if message.retain and not raw:
                logger.info("ignoring a retained message on %s", message.topic)
                continue
            try:
                if raw:
                    handler(message)
                else:
                    handler(message.topic, message.payload)
            except Exception:
                logger.exception("MQTT handler for %s failed", pattern)

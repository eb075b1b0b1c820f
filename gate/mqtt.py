"""gate's MQTT connection: availability with a last will, commands that never arrive late.

Commands are published with QoS 1 and never retained, only while connected
and before they expire. A command not acknowledged in time is withdrawn from
the client's outgoing queue so that a reconnect cannot send it late; the
payload also carries ``expires_at`` for the controller to check. Retained
messages reach a handler only if it asks for them.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable

from gate.config import MqttConfig

logger = logging.getLogger("gate.mqtt")

MessageHandler = Callable[[str, bytes], None]


class MqttLink:
    """One paho client (callback API v2) shared by everything that talks MQTT."""

    def __init__(self, config: MqttConfig, host: str, port: int):
        import paho.mqtt.client as mqtt

        self.config = config
        self.host, self.port = host, port
        self.prefix = config.topic_prefix.rstrip("/")
        self.availability_topic = f"{self.prefix}/status"
        self._connected = threading.Event()
        self._stopping = False
        self._handlers: dict[str, tuple[Callable, bool]] = {}
        self._on_connected: list[Callable[[], None]] = []
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if config.username:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(
                ca_certs=str(config.ca_certs) if config.ca_certs else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # connection -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; reconnects by itself for as long as it runs."""
        self._client.connect_async(self.host, self.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds pass."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Say ``offline`` (retained), disconnect and end the network thread."""
        self._stopping = True
        if self.connected:
            info = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=self.config.ack_timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker %s:%s refused us: %s", self.host, self.port, reason_code)
            return
        logger.info("MQTT connected to %s:%s", self.host, self.port)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
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

    def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False
    ) -> bool:
        """Fire and forget while connected; False when there is no connection."""
        if not self.connected:
            return False
        return self._client.publish(topic, payload, qos=qos, retain=retain).rc == 0

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

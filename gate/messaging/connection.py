"""gate's MQTT connection: one link per process, and the embedded broker when none is set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gate.config import GateConfig
from gate.errors import ComponentError
from gate.messaging.mqtt import MqttLink

logger = logging.getLogger("gate")


class Messaging:
    """The MQTT link (and embedded broker), made on first use and closed together.

    ``keys_dir`` is where the embedded broker's password is kept (beside the
    doors' keys). ``embedded_broker`` False connects to 127.0.0.1 instead of
    starting a broker when none is configured (the CLI talking to a running
    gate). ``client`` names a short-lived client beside a running gate
    (``"cli"``): it connects as ``<client_id>-<client>-<pid>``, so the broker
    never takes gate's own connection away, and never speaks for gate's
    availability.
    """

    def __init__(
        self,
        config: GateConfig,
        keys_dir: Path,
        *,
        embedded_broker: bool = True,
        client: str | None = None,
    ):
        self.config = config
        self.keys_dir = keys_dir
        self.embedded_broker = embedded_broker
        self.client = client
        self._link: MqttLink | None = None
        self._broker = None

    def link(self) -> MqttLink:
        """The MQTT link, connecting in the background; starts the embedded broker if needed.

        The embedded broker's password is kept in the key folder (see
        :mod:`gate.messaging.broker`); the CLI finds the running gate's broker with it.
        """
        if self._link is None:
            mqtt = self.config.mqtt
            host, credentials = mqtt.host, None
            if host is None:
                from gate.messaging.broker import EMBEDDED_USER, EmbeddedBroker, broker_password

                host = "127.0.0.1"
                folder = self.keys_dir
                password = broker_password(folder, create=self.embedded_broker)
                if password is None:
                    logger.warning(
                        "no embedded MQTT broker password in %s: is gate running?", folder
                    )
                else:
                    credentials = (EMBEDDED_USER, password)
                if self.embedded_broker:
                    try:
                        self._broker = EmbeddedBroker(host, mqtt.port, password=password).start()
                    except RuntimeError as exc:
                        raise ComponentError(
                            f"{exc}; set [mqtt] host to use a broker already on port {mqtt.port}, "
                            "or choose another [mqtt] port"
                        ) from None
                    logger.info(
                        "no MQTT broker configured: embedded broker on %s:%s", host, mqtt.port
                    )
            own = f"{mqtt.client_id[:40]}-{self.client}-{os.getpid()}" if self.client else None
            self._link = MqttLink(
                mqtt, host, mqtt.port, credentials=credentials, client_id=own,
                speaks_for_gate=self.client is None,
            )  # fmt: skip
            self._link.start()
        return self._link

    def reached(self) -> bool | None:
        """Whether the link is connected now; None when no component asked for it."""
        return None if self._link is None else self._link.connected

    def close(self) -> None:
        """Disconnect MQTT (saying ``offline``) and stop the embedded broker."""
        if self._link is not None:
            self._link.stop()
            self._link = None
        if self._broker is not None:
            self._broker.stop()
            self._broker = None

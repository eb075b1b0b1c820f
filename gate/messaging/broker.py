"""An embedded MQTT broker (amqtt) for when no broker is configured: loopback only, one password.

The broker admits a single user, ``gate``, with a password gate generates and
keeps in its key folder (``embedded-broker.password``, 0600): gate itself, the
CLI, and ``gate controller`` on the same machine read it there. Nothing in
gate retains commands, and every client of gate's checks that a message is on
a topic it asked for: amqtt hands a new client the retained messages of every
topic anyone subscribed to.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from amqtt.plugins.base import BaseAuthPlugin

from gate.actions.signing import new_key, read_key, write_private
from gate.errors import ComponentError

#: the embedded broker's only user
EMBEDDED_USER = "gate"
PASSWORD_FILE = "embedded-broker.password"

logger = logging.getLogger("gate.broker")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def broker_password(folder: Path, *, create: bool = False) -> str | None:
    """The embedded broker's password, kept in ``folder``; made when missing if ``create``."""
    path = Path(folder) / PASSWORD_FILE
    if not path.exists():
        if not create:
            return None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, new_key() + "\n")
        except OSError as exc:
            raise ComponentError(
                f"{path}: cannot keep the embedded broker's password: {exc}"
            ) from None
        logger.info("embedded MQTT broker: new password for user %s in %s", EMBEDDED_USER, path)
    return read_key(path)


class PasswordAuth(BaseAuthPlugin):
    """amqtt plugin: admits only ``username`` with ``password`` (compared in constant time)."""

    @dataclass
    class Config:
        username: str = EMBEDDED_USER
        password: str = ""

    async def authenticate(self, *, session) -> bool:
        expected = self.config.password.encode()
        given = (session.password or "").encode() if session is not None else b""
        right_user = session is not None and session.username == self.config.username
        return bool(expected) and hmac.compare_digest(given, expected) and right_user


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class EmbeddedBroker:
    """amqtt in a thread of its own, listening on ``host:port`` (loopback only), with a password."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        password: str,
        username: str = EMBEDDED_USER,
    ):
        if not _is_loopback(host):
            raise ValueError(f"the embedded MQTT broker listens on loopback only, not {host}")
        if not password:
            raise ValueError("the embedded MQTT broker needs a password")
        self.host, self.port = host, port
        self.username, self._password = username, password
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start listening; raises if the port cannot be had."""
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are raised to us
        self._thread = threading.Thread(target=self._run, name="gate-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("embedded MQTT broker did not start in time")
        if self._error is not None:
            raise RuntimeError(f"embedded MQTT broker failed: {self._error}")
        return self

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                f"{__name__}.PasswordAuth": {"username": self.username, "password": self._password}
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except BaseException as exc:  # report to the starting thread, then end
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await broker.shutdown()

    def stop(self) -> None:
        """Shut the broker down and wait for its thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

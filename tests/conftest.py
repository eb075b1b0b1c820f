"""Shared fixtures: real data from ../shared/data, a real mosquitto broker, plugin managers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when the data is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )


class Mosquitto:
    """A real mosquitto on 127.0.0.1, on a port of its own, that tests may stop and restart."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A fresh real broker for one test (skips if mosquitto is absent, except in CI)."""
    binary = _mosquitto_binary()
    if binary is None:
        if os.environ.get("GATE_REQUIRE_MOSQUITTO"):
            pytest.fail("mosquitto is required here but not installed")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Mosquitto(binary, tmp_path).start()
    yield broker
    broker.stop()


class Subscriber:
    """A plain paho client recording every message under a topic filter."""

    def __init__(self, port: int, topic: str = "#"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscriber did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.retain, time.time()))

    def on(self, topic: str) -> list[tuple[bytes, bool, float]]:
        with self._lock:
            return [(p, r, t) for tp, p, r, t in self.messages if tp == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.on(topic)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.on(topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscribe():
    """``subscribe(port, topic)`` -> a recording :class:`Subscriber`, closed after the test."""
    made: list[Subscriber] = []

    def make(port: int, topic: str = "#") -> Subscriber:
        sub = Subscriber(port, topic)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only."""
    from gate.plugins import make_plugin_manager

    return make_plugin_manager(entry_points=False)


@pytest.fixture
def db(tmp_path: Path):
    from gate.database import GateDB

    store = GateDB(tmp_path / "gate.db")
    yield store
    store.close()


@pytest.fixture(scope="session")
def default_pipeline():
    """The default pipeline (built-ins, default config), built once: models are slow to load."""
    from gate.config import GateConfig
    from gate.pipeline import Pipeline
    from gate.plugins import make_plugin_manager

    pipeline = Pipeline(GateConfig(), make_plugin_manager(entry_points=False).registry)
    yield pipeline
    pipeline.close()

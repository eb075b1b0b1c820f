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
    """A real mosquitto on 127.0.0.1, on a port of its own, that tests may stop and restart.

    ``settings`` are more lines of mosquitto.conf for that listener (TLS, users, ACL).
    """

    def __init__(self, binary: str, workdir: Path, settings: str = "allow_anonymous true\n"):
        self.binary = binary
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            "user root\npersistence false\n"  # as root: no drop to 'mosquitto' (tmp files)
            f"listener {self.port} 127.0.0.1\n{settings}"
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


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


#: a fresh P-256 key, unencrypted
NEW_KEY = ("-newkey", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def make_ca(folder: Path, name: str) -> None:
    """``name.crt`` and ``name.key``: a certificate authority for one test session."""
    subject = f"/CN=gate test {name}"
    openssl("req", "-x509", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", subject, cwd=folder)  # fmt: skip


def issue(folder: Path, ca: str, name: str, extensions: str) -> None:
    """``name.crt`` and ``name.key`` signed by ``ca``."""
    (folder / f"{name}.ext").write_text(extensions + "\n")
    openssl("req", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> Path:
    """A CA with a server certificate for 127.0.0.1 and a client one (``gate``), and a
    second CA (``rogue``) with a client certificate of its own: made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    make_ca(folder, "ca")
    issue(folder, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    issue(folder, "ca", "gate", "extendedKeyUsage=clientAuth")
    make_ca(folder, "rogue")
    issue(folder, "rogue", "intruder", "extendedKeyUsage=clientAuth")
    return folder


#: users of the secure broker and their passwords
USERS = {"gate": "gate-s3cret", "watcher": "watch-s3cret"}


@pytest.fixture
def secure_mosquitto(tmp_path: Path, certificates: Path):
    """A real mosquitto on TLS only, asking for a client certificate from ``certificates``' CA,
    with users (:data:`USERS`) in a password file and an ACL; nobody anonymous."""
    binary = _mosquitto_binary()
    passwd_tool = shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        if os.environ.get("GATE_REQUIRE_MOSQUITTO"):
            pytest.fail("mosquitto (and mosquitto_passwd) are required here but not installed")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    passwd = tmp_path / "passwd"
    for user, password in USERS.items():
        create = ["-c"] if not passwd.exists() else []
        subprocess.run([passwd_tool, *create, "-b", str(passwd), user, password], check=True)
    acl = tmp_path / "acl"
    acl.write_text("user gate\ntopic readwrite gate/#\n\nuser watcher\ntopic read gate/#\n")
    settings = (
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
        f"cafile {certificates / 'ca.crt'}\ncertfile {certificates / 'server.crt'}\n"
        f"keyfile {certificates / 'server.key'}\nrequire_certificate true\n"
    )
    broker = Mosquitto(binary, tmp_path, settings).start()
    yield broker
    broker.stop()


def client_tls(certificates: Path, name: str = "gate"):
    """An SSL context trusting the test CA, presenting client certificate ``name``."""
    import ssl

    context = ssl.create_default_context(cafile=str(certificates / "ca.crt"))
    context.load_cert_chain(str(certificates / f"{name}.crt"), str(certificates / f"{name}.key"))
    return context


class Subscriber:
    """A plain paho client recording every message under a topic filter.

    ``login`` is ``(user, password)``; ``tls`` an SSL context (see :func:`client_tls`).
    """

    def __init__(self, port: int, topic: str = "#", login=None, tls=None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if login is not None:
            self.client.username_pw_set(*login)
        if tls is not None:
            self.client.tls_set_context(tls)
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

    def make(port: int, topic: str = "#", login=None, tls=None) -> Subscriber:
        sub = Subscriber(port, topic, login, tls)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def gate(tmp_path, monkeypatch):
    """``gate(*args, code=0)``: the ``gate`` command on a database of ada and bob (one made-up
    template each), without any config file; returns what it printed (never a traceback)."""
    import numpy as np
    from click.testing import CliRunner

    from gate.cli import cli
    from gate.storage.database import GateDB, Template

    monkeypatch.delenv("GATE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    db_path = tmp_path / "gate.db"
    store = GateDB(db_path)
    for name in ("ada", "bob"):
        vector = np.full(128, len(name), np.float32)
        store.enroll(name, [Template(vector, "e", "1", "s", name, "x.jpg", 100, 100)])
    store.close()
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["--db", str(db_path), *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result.output

    run.db_path = db_path
    return run


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only."""
    from gate.plugins import make_plugin_manager

    return make_plugin_manager(entry_points=False)


@pytest.fixture
def db(tmp_path: Path):
    from gate.storage.database import GateDB

    store = GateDB(tmp_path / "gate.db")
    yield store
    store.close()


@pytest.fixture(scope="session")
def default_pipeline():
    """The default pipeline (built-ins, default config), built once: models are slow to load."""
    from gate.config import GateConfig
    from gate.plugins import make_plugin_manager
    from gate.recognition.pipeline import Pipeline

    pipeline = Pipeline(GateConfig(), make_plugin_manager(entry_points=False).registry)
    yield pipeline
    pipeline.close()

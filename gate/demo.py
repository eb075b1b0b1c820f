"""``gate demo``: the whole system on bundled media, with an embedded broker, nothing to set up."""

from __future__ import annotations

import contextlib
import json
import secrets
import tempfile
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import click

from gate.config import parse_config
from gate.messaging.broker import EMBEDDED_USER, EmbeddedBroker, free_port
from gate.plugins import plugin_manager
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB


def sample_path(*parts: str) -> Path:
    """A file or folder of the bundled samples."""
    return Path(str(resources.files("gate").joinpath("samples", *parts)))


def _watch(port: int, prefix: str, password: str) -> tuple[object, threading.Event]:
    """A plain MQTT client that prints every message under ``prefix/#``."""
    import paho.mqtt.client as mqtt

    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gate-demo-watcher")
    client.username_pw_set(EMBEDDED_USER, password)

    def on_connect(c, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            c.subscribe(f"{prefix}/#", qos=1)

    def on_message(c, userdata, message):
        if not mqtt.topic_matches_sub(f"{prefix}/#", message.topic):
            return  # amqtt hands out retained messages of others' subscriptions
        payload = message.payload.decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            payload = json.dumps(json.loads(payload), sort_keys=True)
        flag = " (retained)" if message.retain else ""
        click.echo(f"    mqtt {message.topic}{flag}: {payload}")

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, ready


def run_demo(
    workdir: Path | None,
    *,
    echo_event: Callable,
    echo_stats: Callable,
) -> None:
    """Enroll the sample people, run door ``front`` over the sample clip, print it all."""
    with tempfile.TemporaryDirectory(prefix="gate-demo-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        port, password = free_port(), secrets.token_hex(16)
        mqtt = {"host": "127.0.0.1", "port": port, "client_id": "gate-demo"}
        mqtt |= {"username": EMBEDDED_USER, "password": password}
        config = parse_config({"mqtt": mqtt}, origin="demo")
        db = GateDB(root / "demo.db")
        pipeline = Pipeline(config, plugin_manager().registry)
        with EmbeddedBroker("127.0.0.1", port, password=password):
            watcher, ready = _watch(port, config.mqtt.topic_prefix, password)
            try:
                ready.wait(5)
                kept = "" if workdir else " (temporary: --workdir DIR keeps it)"
                click.echo(f"embedded MQTT broker on 127.0.0.1:{port}; database {db.path}{kept}")
                for person in sorted(p for p in sample_path("people").iterdir() if p.is_dir()):
                    result = enroll(db, pipeline, person.name, list_images(person))
                    reasons = "; ".join(r.reason for r in result.refusals)
                    state = f"{result.added} photo(s)" if result.stored else f"refused: {reasons}"
                    click.echo(f"enrolled {person.name}: {state}")
                clip = sample_path("door.mp4")
                click.echo(f"running door 'front' over {clip.name} ...")
                doors = doors_for_run(db, config, ["front"], str(clip))
                runner = Runner(
                    pipeline, db.path, doors, hook=plugin_manager().hook, on_event=echo_event
                )
                echo_stats(runner.run()["front"])
            finally:
                pipeline.close()
                watcher.loop_stop()
                watcher.disconnect()
                db.close()

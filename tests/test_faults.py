"""Faults stay local: dead, silent and hung sources, SIGTERM, doors changed while gate runs,
CLI commands beside a running gate, and retained states that tell the truth."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from gate.config import CaptureConfig, parse_config
from gate.demo import sample_path
from gate.messaging.homeassistant import discovery
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.capture import END, Capture, Source
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB
from tests.conftest import data_path, free_port

pytestmark = pytest.mark.slow


def wait_until(check, timeout: float, step: float = 0.05):
    """``check()`` once it is truthy, else its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def retained(port: int, topics: list[str], subscribe) -> dict[str, bytes]:
    """What a client that joins now receives as retained on each topic (b"" for nothing)."""
    late = subscribe(port, "#")
    time.sleep(0.5)
    found = {t: b"" for t in topics}
    for topic, payload, was_retained, _ in late.messages:
        if was_retained and topic in found:
            found[topic] = payload
    return found


def enroll_samples(db: GateDB, pipeline: Pipeline) -> None:
    for person in sorted(p for p in sample_path("people").iterdir() if p.is_dir()):
        assert enroll(db, pipeline, person.name, list_images(person)).stored


class GateProcess:
    """``gate run`` as its own process, its output in files the test can read while it runs."""

    def __init__(self, tmp_path: Path, config: str, *args: str):
        self.config = tmp_path / "gate.toml"
        self.config.write_text(config)
        self.out, self.err = tmp_path / "run.out", tmp_path / "run.err"
        env = {**os.environ, "GATE_CONFIG": str(self.config), "GATE_DB": str(tmp_path / "gate.db")}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gate", "run", *args], stdout=out, stderr=err, env=env
            )

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def gate_process():
    made: list[GateProcess] = []

    def make(*args, **kwargs) -> GateProcess:
        made.append(GateProcess(*args, **kwargs))
        return made[-1]

    yield make
    for process in made:
        process.kill()


def mqtt_site(port: int, **extra) -> str:
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "gate-{port}"\n'
        "[decision]\nrelock_s = 60\npresence_off_s = 30\n"
        "[capture]\nreopen_min_s = 0.2\nreopen_max_s = 1.0\n"
        + "".join(f"{line}\n" for line in extra.get("lines", []))
    )


def test_two_doors_one_dead_the_other_decides_the_dead_recovers_and_sigterm_is_clean(
    tmp_path, mosquitto, subscribe, gate_process, default_pipeline
):
    db = GateDB(tmp_path / "gate.db")
    enroll_samples(db, default_pipeline)
    later = tmp_path / "later.mp4"  # the back door's camera: not there yet
    db.add_door("front", source=str(sample_path("door.mp4")))
    db.add_door("back", source=str(later))
    db.close()
    watch = subscribe(mosquitto.port, "gate/#")
    gate = gate_process(tmp_path, mqtt_site(mosquitto.port), "--realtime")

    def said(topic: str, payload: bytes):
        return lambda: any(m[0] == payload for m in watch.on(topic))

    assert wait_until(said("gate/front/lock", b"UNLOCKED"), 60), gate.stderr()  # front decides
    assert gate.proc.poll() is None, gate.stderr()
    assert watch.on("gate/back/availability")[-1][0] == b"offline"
    assert "later.mp4" in gate.stderr() and "no such file" in gate.stderr()
    assert not said("gate/back/lock", b"UNLOCKED")()

    shutil.copy(sample_path("door.mp4"), tmp_path / "copying.mp4")
    (tmp_path / "copying.mp4").rename(later)  # the camera appears
    assert wait_until(said("gate/back/availability", b"online"), 20), gate.stderr()
    assert wait_until(said("gate/back/lock", b"UNLOCKED"), 30), gate.stderr()  # back decides
    assert wait_until(said("gate/back/face", b"ON"), 5)

    assert gate.terminate() == 0, gate.stderr()
    assert "Traceback" not in gate.stderr()
    assert "front: " in gate.stdout() and "back: " in gate.stdout()  # the summary
    topics = ["gate/status", "gate/front/availability", "gate/back/availability",
              "gate/front/lock", "gate/back/lock", "gate/front/face", "gate/back/face"]  # fmt: skip
    left = retained(mosquitto.port, topics, subscribe)
    assert left["gate/status"] == b"offline"
    assert left["gate/front/availability"] == left["gate/back/availability"] == b"offline"
    assert left["gate/front/lock"] == left["gate/back/lock"] == b"LOCKED"
    assert left["gate/front/face"] == left["gate/back/face"] == b"OFF"
    db = GateDB(tmp_path / "gate.db")
    assert {e.door for e in db.events() if e.decision == "granted"} == {"front", "back"}
    db.close()


def test_dead_sources_say_why_and_keep_trying(tmp_path, gate_process):
    refused = free_port()  # nobody listens there
    (tmp_path / "empty").mkdir()
    db = GateDB(tmp_path / "gate.db")
    db.add_door("cam", source="/dev/video97")
    db.add_door("ipcam", source=f"rtsp://127.0.0.1:{refused}/stream")
    db.add_door("empty", source=str(tmp_path / "empty"))
    db.close()
    config = '[pipeline]\nactuators = ["log"]\n[capture]\nreopen_min_s = 0.1\nreopen_max_s = 0.4\n'
    gate = gate_process(tmp_path, config)
    reasons = ("device missing", "connection refused", "no frames")
    assert wait_until(lambda: all(r in gate.stderr() for r in reasons), 60), gate.stderr()
    assert gate.proc.poll() is None  # every door still trying
    time.sleep(2)
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(5):  # someone stands in front of the camera
        shutil.copy(sample_path("people", "obama", "obama.jpg"), staging / f"{i}.jpg")
    staging.rename(tmp_path / "empty")  # frames appear in the empty folder, all at once
    assert wait_until(lambda: "empty " in gate.stdout(), 20), gate.stderr()  # it decided
    assert gate.terminate() == 0, gate.stderr()
    err = gate.stderr()
    assert "Traceback" not in err
    for door, reason in zip(("cam", "ipcam"), reasons, strict=False):
        assert any(door in line and reason in line for line in err.splitlines()), door
    tries = sum("ipcam" in line and "connection refused" in line for line in err.splitlines())
    assert tries <= 3  # said when it changed, not on every try


class SilentCamera(Source):
    """A live source that opens every time and never gives a frame."""

    live = True

    def __init__(self):
        super().__init__("silent")
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def read(self):
        return None


def test_a_source_that_opens_but_gives_no_frames_backs_off():
    camera = SilentCamera()
    camera.open()
    capture = Capture(camera, CaptureConfig(reopen_min_s=0.05, reopen_max_s=0.4)).start()
    time.sleep(2.5)
    capture.stop()
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.4 + ... : about 8 opens in 2.5 s, not one every 0.05 s
    assert 3 <= camera.opens <= 10, camera.opens


class HangingCamera(Source):
    """A live camera whose ``read`` hangs for good after ``frames`` frames."""

    live = True
    made: ClassVar[list[HangingCamera]] = []

    def __init__(self, frames: int):
        super().__init__("hanging")
        self.frames = frames
        self.released = threading.Event()
        self.closed = False
        HangingCamera.made.append(self)

    def read(self):
        if self.frames <= 0:
            self.released.wait()  # a driver stuck in a syscall
            return None
        self.frames -= 1
        time.sleep(0.01)
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        self.closed = True


def test_a_hung_read_is_caught_by_the_frame_age_watchdog_and_the_source_restarted():
    HangingCamera.made.clear()
    statuses: list[tuple[bool, str]] = []
    settings = CaptureConfig(reopen_min_s=0.05, reopen_max_s=0.2, stall_s=0.5)
    capture = Capture(
        None,
        settings,
        opener=lambda: HangingCamera(frames=3 if not HangingCamera.made else 1000),
        live=True,
        on_status=lambda available, why: statuses.append((available, why)),
    ).start()
    frames = []
    started = time.monotonic()
    while len(frames) < 10 and time.monotonic() - started < 10:
        try:
            frame = capture.next(timeout=0.2)
        except Exception:
            continue
        assert frame is not END
        frames.append(frame)
    first = HangingCamera.made[0]
    first.released.set()  # the stuck call finally returns
    capture.stop()
    assert len(frames) == 10  # frames came again after the hang
    assert len(HangingCamera.made) == 2 and capture.restarts == 1
    assert any(not ok and "no frame for 0.5 s" in why for ok, why in statuses), statuses
    assert statuses[-1][0] is True
    assert wait_until(lambda: first.closed, 2)  # closed by its own thread once read returned


def ha_site(port: int, **decision):
    return parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": port},
            "pipeline": {"actuators": ["mqtt", "homeassistant"]},
            "decision": decision,
            "actuators": {"homeassistant": {"remote_allow": ["home-assistant"]}},
        }
    )


def start(runner: Runner) -> threading.Thread:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def test_doors_removed_or_changed_while_gate_runs_take_effect(tmp_path, pm, mosquitto, subscribe):
    config = ha_site(mosquitto.port, relock_s=0.5)
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    alex = data_path("people", "face_recognition", "alex_lacamoire")
    assert enroll(db, pipeline, "alex", list_images(alex)).stored
    photos = tmp_path / "alex-at-the-door"
    photos.mkdir()
    for i in range(6):  # one person standing at the door
        shutil.copy(list_images(alex)[0], photos / f"{i}.jpg")
    db.add_door("front", source=str(sample_path("door.mp4")))
    db.add_door("back", source=str(sample_path("door.mp4")))
    back = [t for t in discovery(config, "back")]
    watch = subscribe(mosquitto.port, "#")
    runner = Runner(
        pipeline, db.path, doors_for_run(db, config, [], None), hook=pm.hook, realtime=True,
        reload_s=0.3, site=True,
    )  # fmt: skip
    thread = start(runner)
    try:
        assert wait_until(lambda: all(watch.on(t) for t in back), 20)
        db.remove_door("back")  # as gate doors remove does, from another process
        for topic in back:  # withdrawn by the running gate
            assert wait_until(lambda t=topic: watch.on(t)[-1][0] == b"", 5), topic
        time.sleep(0.5)
        watch.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        time.sleep(1.5)
        for topic in back:
            assert watch.on(topic)[-1][0] == b"", "the removed door came back"
        assert "back" not in {loop.door.name for loop in runner.running()}

        db.update_door("front", source=str(photos))  # a new camera for the front door
        assert wait_until(
            lambda: any(e.person == "alex" and e.door == "front" for e in db.events()), 30
        ), "front restarted on its new source"
    finally:
        runner.stop()
        thread.join(timeout=30)
        pipeline.close()
        db.close()
    assert not thread.is_alive()


def gate_cli(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "cli.toml"
    path.write_text(config)
    env = {**os.environ, "GATE_CONFIG": str(path), "GATE_DB": str(tmp_path / "gate.db")}
    return subprocess.run(
        [sys.executable, "-m", "gate", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_commands_keep_their_own_client_and_manual_unlocks_show_in_home_assistant(
    tmp_path, pm, mosquitto, subscribe
):
    config = ha_site(mosquitto.port, relock_s=1.0)  # client id "gate", like the CLI's config
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    db.add_door("front", source=str(sample_path("door.mp4")))
    watch = subscribe(mosquitto.port, "#")
    runner = Runner(pipeline, db.path, doors_for_run(db, config, [], None), realtime=True)
    thread = start(runner)
    try:
        assert wait_until(lambda: watch.on("gate/status"), 10)
        cli = f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
        result = gate_cli(tmp_path, cli, "doors", "unlock", "front", "--reason", "parcel")
        assert result.returncode == 0, result.stderr
        time.sleep(1.0)
        assert [m[0] for m in watch.on("gate/status")] == [b"online"]  # never flapped
        assert runner.messaging.link().connected  # not kicked off the broker
        assert retained(mosquitto.port, ["gate/status"], subscribe)["gate/status"] == b"online"
        locks = lambda: [m[0] for m in watch.on("gate/front/lock")]  # noqa: E731
        assert wait_until(lambda: locks()[-2:] == [b"UNLOCKED", b"LOCKED"], 10), locks()
        decisions = [json.loads(m[0]) for m in watch.on("gate/front/decision")]
        assert ("granted", "manual") in {(d["decision"], d["reason"]) for d in decisions}
    finally:
        runner.stop()
        thread.join(timeout=30)
        pipeline.close()
        db.close()


def test_a_reannouncement_keeps_the_true_lock_and_face_states(tmp_path, pm, mosquitto, subscribe):
    config = ha_site(mosquitto.port, relock_s=30, presence_off_s=20)
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    enroll_samples(db, pipeline)
    db.add_door("front", source=str(sample_path("door.mp4")))
    watch = subscribe(mosquitto.port, "#")
    runner = Runner(pipeline, db.path, doors_for_run(db, config, [], None), realtime=True)
    thread = start(runner)
    try:
        unlocked = lambda: any(m[0] == b"UNLOCKED" for m in watch.on("gate/front/lock"))  # noqa: E731
        assert wait_until(unlocked, 30)
        assert watch.on("gate/front/face")[-1][0] == b"ON"
        lock_config = next(t for t in discovery(config, "front") if "/lock/" in t)
        announced = len(watch.on(lock_config))
        watch.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        assert wait_until(lambda: len(watch.on(lock_config)) > announced, 5)
        time.sleep(0.5)
        left = retained(mosquitto.port, ["gate/front/lock", "gate/front/face"], subscribe)
        assert left == {"gate/front/lock": b"UNLOCKED", "gate/front/face": b"ON"}
    finally:
        runner.stop()
        thread.join(timeout=30)
        pipeline.close()
        db.close()


def test_doors_remove_clears_the_retained_state_topics(tmp_path, mosquitto, subscribe):
    cli = f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
    assert gate_cli(tmp_path, cli, "doors", "add", "garage", "--source", "0").returncode == 0
    watch = subscribe(mosquitto.port, "#")
    left_by_gate = {"lock": "UNLOCKED", "face": "ON", "person": "alex", "availability": "online",
                    "decision": json.dumps({"decision": "granted"})}  # fmt: skip
    for leaf, payload in left_by_gate.items():
        watch.client.publish(f"gate/garage/{leaf}", payload, qos=1, retain=True).wait_for_publish(5)
    result = gate_cli(tmp_path, cli, "doors", "remove", "garage", "--yes")
    assert result.returncode == 0, result.stderr
    topics = [f"gate/garage/{leaf}" for leaf in left_by_gate]
    assert retained(mosquitto.port, topics, subscribe) == dict.fromkeys(topics, b"")

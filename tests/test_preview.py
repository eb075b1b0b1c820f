"""``gate run --preview``: the live view of each door, seen updating in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gate.config import parse_config
from gate.demo import sample_path
from gate.recognition.enrollment import enroll
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.preview import Preview
from gate.runtime.runner import Runner
from gate.storage.database import GateDB
from tests.conftest import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, profile: Path) -> str:
    """Run headless Chromium as the project's machines allow (no sandbox as root, no network
    beyond loopback); its standard output."""
    if CHROMIUM is None:
        if os.environ.get("GATE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (GATE_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("chromium not installed (Debian package chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ]  # fmt: skip
    done = subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout


@pytest.fixture
def watched_door(tmp_path, pm):
    """Door ``front`` running over the sample clip in real time, with the preview on."""
    config = parse_config({"pipeline": {"actuators": ["log"]}})
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    for person in ("obama", "biden"):
        assert enroll(db, pipeline, person, [sample_path("people", person, f"{person}.jpg")]).stored
    doors = doors_for_run(db, config, ["front"], str(sample_path("door.mp4")))
    preview = Preview(port=free_port())
    runner = Runner(pipeline, db.path, doors, hook=pm.hook, realtime=True, preview=preview)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while preview.status().get("front", {}).get("frames", 0) < 3:
        assert time.monotonic() < deadline, "the door never sent a frame to the preview"
        time.sleep(0.1)
    yield preview
    runner.stop()
    thread.join(timeout=30)
    pipeline.close()
    db.close()


def frames_shown(dom: str) -> int:
    found = re.search(r'class="frames">(\d+)<', dom)
    assert found, dom[:2000]
    return int(found.group(1))


def test_the_preview_page_updates_in_chromium_and_listens_on_loopback(watched_door, tmp_path):
    preview = watched_door
    assert preview.host == "127.0.0.1"
    page = preview.url
    budget = "--virtual-time-budget=3000"
    first = frames_shown(chromium(budget, "--dump-dom", page, profile=tmp_path / "p1"))
    second = frames_shown(chromium(budget, "--dump-dom", page, profile=tmp_path / "p2"))
    assert 0 < first < second  # the page shows the door's frames as they come
    shot = tmp_path / "preview.png"
    chromium(budget, "--window-size=760,620", f"--screenshot={shot}", page, profile=tmp_path / "p3")
    from gate.recognition.images import read_image

    picture = read_image(shot).pixels
    assert picture.shape[:2] == (620, 760)
    assert picture.std() > 10  # a frame is on the page, not an empty one


def test_the_door_is_an_mjpeg_stream_of_annotated_frames(watched_door):
    preview = watched_door
    with urllib.request.urlopen(preview.url + "door/front.mjpg", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = b""
        while data.count(b"--frame") < 3:
            data += stream.read1(65536)
    parts = [p for p in data.split(b"--frame") if b"image/jpeg" in p]
    assert len(parts) >= 2
    jpeg = parts[0].split(b"\r\n\r\n", 1)[1]
    assert jpeg.startswith(b"\xff\xd8")  # a JPEG picture
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(preview.url + "door/nowhere.jpg", timeout=10)
    assert missing.value.code == 404


def test_a_busy_preview_port_is_a_clear_error():
    from gate.errors import ConfigError

    first = Preview(port=free_port())
    first.start()
    try:
        with pytest.raises(ConfigError, match="choose another --preview-port"):
            Preview(port=first.port).start()
    finally:
        first.stop()

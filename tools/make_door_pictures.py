"""The README's "At the door" pictures, made by gate itself: an annotated frame of the sample
clip (``gate identify --annotate``) and a screenshot of the live view (``gate run --preview``)
in headless Chromium. Run from the project root: ``python tools/make_door_pictures.py``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from gate.cli import make_cli
from gate.config import parse_config
from gate.demo import sample_path
from gate.plugins import plugin_manager
from gate.recognition.images import cv2
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.preview import Preview
from gate.runtime.runner import Runner
from gate.storage.database import GateDB

OUT = Path("docs")
FRAME = 95  # a frame of the sample clip with a face on it


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_path = root / "gate.db"
        (root / "gate.toml").write_text('[pipeline]\nactuators = ["log"]\n')
        gate = make_cli(plugin_manager())
        args = ["--config", str(root / "gate.toml"), "--db", str(db_path)]
        for person in ("obama", "biden"):
            photo = sample_path("people", person, f"{person}.jpg")
            done = CliRunner().invoke(gate, [*args, "enroll", person, str(photo)])
            assert done.exit_code == 0, done.output
        clip = cv2().VideoCapture(str(sample_path("door.mp4")))
        clip.set(cv2().CAP_PROP_POS_FRAMES, FRAME)
        ok, image = clip.read()
        assert ok, "no frame"
        frame = root / "door-frame.jpg"
        cv2().imwrite(str(frame), image)
        done = CliRunner().invoke(
            gate, [*args, "identify", str(frame), "--annotate", str(root / "annotated")]
        )
        assert done.exit_code == 0, done.output
        shutil.copy(root / "annotated" / "door-frame.jpg", OUT / "at-the-door-annotated.jpg")
        preview_screenshot(root, db_path, OUT / "at-the-door-preview.png")


def preview_screenshot(root: Path, db_path: Path, out: Path) -> None:
    config = parse_config({"pipeline": {"actuators": ["log"]}})
    pipeline = Pipeline(config, plugin_manager().registry)
    db = GateDB(db_path)
    doors = doors_for_run(db, config, ["front"], str(sample_path("door.mp4")))
    preview = Preview(port=0)
    runner = Runner(pipeline, db.path, doors, realtime=True, preview=preview)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not preview.status().get("front", {}).get("decision"):  # a face has been decided
        time.sleep(0.05)
    subprocess.run(
        [
            shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={root / 'chromium'}",
            "--virtual-time-budget=1000", "--window-size=620,560", f"--screenshot={out}",
            preview.url,
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    runner.stop()
    thread.join(timeout=30)
    pipeline.close()
    db.close()


if __name__ == "__main__":
    main()

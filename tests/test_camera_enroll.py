"""Enrollment at the camera, with the bundled clip as the camera; refusals show their numbers."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from click.testing import CliRunner

from gate.cli import cli
from gate.recognition.enrollment import Refusal, examine, side_by_side
from gate.recognition.images import cv2, read_image
from gate.storage.database import GateDB

SAMPLES = "gate/samples"
#: door.mp4 at 10 fps: rocket (no face) 55-64, cameraman (turned away) 65-84, biden 85-109
FIRST, LAST = 58, 110


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """A section of the bundled clip: no face, a face turned away, then biden for 2.5 s."""
    cv = cv2()
    source = cv.VideoCapture(f"{SAMPLES}/door.mp4")
    path = tmp_path_factory.mktemp("clip") / "biden.mp4"
    writer = cv.VideoWriter(str(path), cv.VideoWriter_fourcc(*"mp4v"), 10, (640, 480))
    for index in range(LAST):
        ok, frame = source.read()
        assert ok, f"door.mp4 ends at frame {index}"
        if index >= FIRST:
            writer.write(frame)
    source.release()
    writer.release()
    return str(path)


@pytest.fixture
def gate(tmp_path, monkeypatch):
    monkeypatch.delenv("GATE_CONFIG", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    db_path = tmp_path / "gate.db"
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["--db", str(db_path), *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    run.db_path = db_path
    return run


def templates(db_path) -> list[dict]:
    store = GateDB(db_path)
    try:
        return list(
            store.db.query(
                "select p.name, t.source_name from templates t join people p on p.id = t.person_id"
            )
        )
    finally:
        store.close()


def test_camera_enrollment_takes_varied_views_guides_and_refuses_look_alikes(gate, clip):
    out = gate("enroll", "biden", "--camera", clip)
    lines = out.splitlines()
    assert lines.count("no face") == 1  # said once, not once per frame
    assert "face the camera" in lines  # the cameraman is turned too far
    assert lines.index("no face") < lines.index("face the camera") < lines.index("view 1/5")
    assert [line for line in lines if line.startswith("view ")] == [
        f"view {i}/5" for i in range(1, 6)
    ]
    assert f"enrolled biden: 5 view(s) from {clip}" in out
    rows = templates(gate.db_path)
    assert len(rows) == 5 and {r["name"] for r in rows} == {"biden"}
    frames = sorted(int(r["source_name"].rsplit("#", 1)[1]) for r in rows)
    assert all(r["source_name"].startswith(f"camera:{clip}#") for r in rows)
    assert all(b - a >= 2 for a, b in itertools.pairwise(frames))  # 0.2 s apart
    assert frames[0] >= 85 - FIRST  # biden's frames, not the cameraman's

    photo = f"{SAMPLES}/people/biden/biden.jpg"
    (report,) = json.loads(gate("identify", photo, "--json"))
    (face,) = report["faces"]
    assert face["status"] == "match" and face["person"] == "biden"

    again = gate("enroll", "biden", "--camera", clip)
    assert "enrolled biden: 0 view(s)" in again and "(5 already enrolled)" in again
    assert len(templates(gate.db_path)) == 5

    refused = gate("enroll", "joe", "--camera", clip, code=1)
    assert re.search(r"looks like biden \(\d\.\d\d\): --force to enroll anyway", refused)
    assert "nothing stored for joe" in refused
    assert {r["name"] for r in templates(gate.db_path)} == {"biden"}


def test_camera_enrollment_times_out_with_one_clear_line_and_stores_nothing(gate):
    out = gate("enroll", "nobody", "--camera", f"{SAMPLES}/door.mp4", "--timeout", "0.5",
               "--views", "3", "--preview", code=1)  # fmt: skip
    assert "headless, text guidance only" in out
    (error,) = [line for line in out.splitlines() if line.startswith("Error:")]
    assert "timed out after 0.5 s with 0/3 good views: no face in 6 of 6 frame(s)" in error
    assert not templates(gate.db_path)


def test_camera_options_need_camera(gate):
    assert "go with --camera" in gate("enroll", "x", "a.jpg", "--views", "3", code=2)
    assert "--camera takes NAME only" in gate("enroll", "x", "a.jpg", "--camera", "0", code=2)


def test_refusals_show_both_numbers_apart():
    assert side_by_side(24.6, 25) == ("24.6", "25.0")
    assert side_by_side(24.96, 25) == ("24.96", "25.00")
    assert side_by_side(-0.3004, 0.3, signed=True) == ("-0.3004", "0.3000")
    assert side_by_side(80, 64) == ("80.0", "64.0")


def test_blurred_photo_refusal_shows_numbers_that_differ(default_pipeline, tmp_path):
    cv = cv2()
    photo = read_image(f"{SAMPLES}/people/obama/obama.jpg").pixels
    cv.imwrite(str(tmp_path / "blurred.png"), cv.GaussianBlur(photo, (0, 0), 9))
    refusal = examine(default_pipeline, tmp_path / "blurred.png")
    assert isinstance(refusal, Refusal) and refusal.kind == "blurred"
    found = re.fullmatch(
        r"face too blurred \(sharpness (\d+\.\d+), need (\d+\.\d+)\)", refusal.reason
    )
    assert found and found[1] != found[2] and float(found[1]) < float(found[2])


def test_views_must_differ_and_the_hint_says_which_way():
    import numpy as np

    from gate.recognition.camera_enrollment import View, differs, turn_hint
    from gate.recognition.quality import FaceQuality

    def view(yaw: float, roll: float = 0.0, shift: float = 0.0) -> View:
        quality = FaceQuality(120.0, 100.0, yaw, roll, 0.9, False)
        return View(0, 0.0, None, quality, np.full(4, shift, np.float32))  # type: ignore[arg-type]

    taken = [view(0.10), view(0.12)]
    assert not differs(view(0.11), taken)
    assert differs(view(0.11, roll=0.2), taken) and differs(view(0.11, shift=0.1), taken)
    assert turn_hint(taken) == "turn slightly right"
    assert turn_hint([view(-0.1)]) == "turn slightly left"

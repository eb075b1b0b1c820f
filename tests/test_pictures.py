"""What gate saw, as pictures: identify --annotate, log --snapshots, log --browse (datasette)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner

from gate.cli import cli
from gate.demo import sample_path
from gate.recognition.annotate import GREEN, RED
from gate.recognition.images import decode_image, read_image
from gate.storage import browse
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso
from tests.conftest import free_port

OBAMA = sample_path("people", "obama", "obama.jpg")
BIDEN = sample_path("people", "biden", "biden.jpg")


@pytest.fixture
def gate(tmp_path, monkeypatch):
    monkeypatch.delenv("GATE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "gate.db"

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["--db", str(path), *args], catch_exceptions=False)
        return result.exit_code, result.output

    run.path = path
    return run


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> np.ndarray:
    return (np.abs(pixels.astype(int) - colour).sum(axis=-1) < tolerance).astype(float)


def test_annotated_images_have_a_box_where_the_face_is_and_little_else_changed(gate, tmp_path):
    assert gate("enroll", "obama", str(OBAMA))[0] == 0
    out = tmp_path / "seen"
    code, text = gate("identify", str(OBAMA), str(BIDEN), "--annotate", str(out), "--json")
    assert code == 0, text
    report = json.loads(text)
    for entry, colour in zip(report, (GREEN, RED), strict=True):
        (face,) = entry["faces"]
        before = read_image(entry["image"]).pixels
        after = read_image(entry["annotated"]).pixels
        assert after.shape == before.shape
        x, y, w, h = (round(v) for v in face["box"])
        rows, cols = after[[y, y + h], x : x + w], after[y : y + h, [x, x + w]]
        edges = [rows[0], rows[1], cols[:, 0], cols[:, 1]]
        assert min(near(edge, colour).mean() for edge in edges) > 0.8, entry["image"]
        assert near(before[y, x : x + w], colour).mean() < 0.2  # not there before
        below = slice(y + h + 10, None)  # under the box: no label there, only JPEG noise
        changed = np.abs(after[below].astype(int) - before[below]).max(axis=-1) > 40
        assert changed.mean() < 0.01
    assert [p.name for p in sorted(out.iterdir())] == ["biden.jpg", "obama.jpg"]
    assert report[1]["faces"][0]["status"] == "unknown"


def test_annotate_refuses_to_overwrite_unless_forced_and_never_the_input(gate, tmp_path):
    out = tmp_path / "seen"
    out.mkdir()
    (out / "obama.jpg").write_bytes(b"earlier")
    code, text = gate("identify", str(OBAMA), "--annotate", str(out))
    assert code == 1 and "exists (--force to overwrite)" in text
    assert (out / "obama.jpg").read_bytes() == b"earlier"
    code, text = gate("identify", str(OBAMA), "--annotate", str(OBAMA.parent), "--force")
    assert code == 1 and "is an input image" in text


@pytest.fixture
def logged(gate):
    """Four events: two with a real face as snapshot, one without, one with an odd name."""
    store = GateDB(gate.path)
    for n, (door, decision, reason, person, snap) in enumerate((
        ("front", "granted", "granted", "obama", OBAMA.read_bytes()),
        ("front", "denied", "unknown", None, BIDEN.read_bytes()),
        ("front", "denied", "manual", None, None),
        ("back", "granted", "granted", "../x y", OBAMA.read_bytes()),
    )):  # fmt: skip
        store.add_event(AccessEvent(utc_iso(1e9 + n), door, decision, reason, person=person,
                                    snapshot=snap))  # fmt: skip
    store.close()
    return gate


def test_log_snapshots_writes_the_selected_faces_as_jpegs(logged, tmp_path):
    from gate.cli.base import App

    out = tmp_path / "faces"
    code, text = logged("log", "--door", "front", "--snapshots", str(out))
    assert code == 0, text
    assert "wrote 2 snapshot(s)" in text and "1 event(s) had no snapshot" in text
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [
        "1-20010909T014640000Z-front-granted-obama.jpg",
        "2-20010909T014641000Z-front-denied-unknown.jpg",
    ]
    assert files[0].read_bytes() == OBAMA.read_bytes()
    detector = App(None, str(logged.path)).pipeline.detector
    for path in files:
        assert len(detector.detect(decode_image(path.read_bytes(), path.name))) == 1
    code, text = logged("log", "--limit", "1", "--snapshots", str(out / "one"), "--json")
    (name,) = [p.rsplit("/", 1)[1] for p in json.loads(text)["files"]]
    assert name == "4-20010909T014643000Z-back-granted-x_y.jpg"  # no path in a person's name


def test_browse_without_datasette_says_how_to_install(logged, monkeypatch):
    monkeypatch.setattr(browse, "datasette_installed", lambda: False)
    code, text = logged("log", "--browse")
    assert code == 1 and "pip install 'gate-access[browse]'" in text


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_datasette_serves_the_events_read_only_with_thumbnails(logged, tmp_path):
    if not browse.datasette_installed():
        pytest.skip("datasette not installed (the [browse] extra)")
    meta = browse.datasette_metadata(logged.path)
    events = meta["databases"]["gate"]["tables"]["events"]
    assert events["facets"] == ["door", "person", "decision", "reason"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    port = free_port()
    command = browse.datasette_command(logged.path, tmp_path / "meta.json", port)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/gate"
        for _ in range(100):
            try:
                status, body = get(f"{base}/events.json?_shape=array&door=front")
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200
        assert [row["id"] for row in json.loads(body)] == [3, 2, 1]
        status, page = get(f"{base}/events")
        assert status == 200 and page.count(b'<img src="data:image/jpeg;base64,') == 3
        assert get(f"{base}/templates")[0] == 403  # embeddings stay out of sight
        assert get(f"{base}?sql=select+*+from+templates")[0] == 403  # no SQL
        assert get(f"http://127.0.0.1:{port}/gate.db")[0] == 403  # nor the whole file
    finally:
        server.terminate()
        server.wait(timeout=10)

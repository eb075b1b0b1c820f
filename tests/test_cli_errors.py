"""Bad input gets a one-line error and an exit code, never a traceback, and loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gate.demo import sample_path

OBAMA = sample_path("people", "obama", "obama.jpg")


def gate(*args: str, db: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GATE_DB": str(db), "GATE_CONFIG": ""}
    env.pop("GATE_CONFIG")
    return subprocess.run(
        [sys.executable, "-m", "gate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def dump(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    jpeg = OBAMA.read_bytes()
    png = sample_path("door.mp4").read_bytes()  # an mp4 is no image either
    files = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + os.urandom(5000),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.png": b"",
        "notes.png": b"these are not pixels\n" * 20,
        "clip.jpg": png[:20000],
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


@pytest.fixture(scope="module")
def enrolled_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("db") / "gate.db"
    result = gate("enroll", "obama", str(OBAMA), db=db)
    assert result.returncode == 0, result.stderr
    return db


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


CASES = {
    "corrupt.jpg": "corrupt JPEG",
    "truncated.jpg": "truncated or corrupt JPEG",
    "empty.png": "empty file",
    "notes.png": "not an image, or corrupt",
    "clip.jpg": "not an image, or corrupt",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_enroll_refuses_bad_files_and_stores_nothing(name, bad_files, enrolled_db):
    before = dump(enrolled_db)
    result = gate("enroll", "mallory", str(bad_files[name]), db=enrolled_db)
    assert_one_line_error(result, f"refused {bad_files[name]}", CASES[name])
    assert result.returncode == 1
    assert dump(enrolled_db) == before


@pytest.mark.parametrize("name", sorted(CASES))
def test_identify_reports_bad_files_in_one_line(name, bad_files, enrolled_db):
    before = dump(enrolled_db)
    result = gate("identify", str(bad_files[name]), db=enrolled_db)
    assert_one_line_error(result, str(bad_files[name]), CASES[name])
    assert result.returncode == 1
    assert dump(enrolled_db) == before


def test_one_bad_photo_keeps_the_good_ones_out_too(bad_files, enrolled_db):
    before = dump(enrolled_db)
    result = gate("enroll", "obama", str(OBAMA), str(bad_files["truncated.jpg"]), db=enrolled_db)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "refused" in result.stderr and "nothing stored for obama" in result.stderr
    assert dump(enrolled_db) == before


def test_verify_with_a_bad_file(bad_files, enrolled_db):
    result = gate("verify", str(OBAMA), str(bad_files["empty.png"]), db=enrolled_db)
    assert_one_line_error(result, "empty file")


def test_missing_file_and_folder(tmp_path, enrolled_db):
    before = dump(enrolled_db)
    result = gate("identify", str(tmp_path / "nope.jpg"), db=enrolled_db)
    assert_one_line_error(result, "nope.jpg", "No such file")
    result = gate("identify", str(tmp_path), db=enrolled_db)
    assert_one_line_error(result, "is a folder")
    assert dump(enrolled_db) == before


def test_run_on_a_broken_video_or_missing_source(bad_files, enrolled_db, tmp_path):
    before = dump(enrolled_db)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    result = gate("run", "--source", str(broken), db=enrolled_db)
    assert_one_line_error(result, "cannot open video source")
    result = gate("run", "--source", str(tmp_path / "absent.mp4"), db=enrolled_db)
    assert_one_line_error(result, "no such file, folder or camera")
    assert dump(enrolled_db) == before


def test_unknown_option_and_broken_config(tmp_path, enrolled_db):
    result = gate("enroll", "--bogus", db=enrolled_db)
    assert result.returncode == 2
    assert "No such option '--bogus'" in result.stderr and "Traceback" not in result.stderr
    config = tmp_path / "gate.toml"
    config.write_text("[decision]\nconfirm_frames = 'three'\n")
    result = gate("--config", str(config), "people", "list", db=enrolled_db)
    assert_one_line_error(result, f"{config}: decision.confirm_frames: Input should be")


def test_a_database_file_that_is_not_one(tmp_path):
    path = tmp_path / "gate.db"
    path.write_bytes(b"definitely not sqlite" * 200)
    result = gate("people", "list", db=path)
    assert_one_line_error(result, "not a usable gate database")
    assert path.read_bytes() == b"definitely not sqlite" * 200


def test_embedded_broker_on_a_busy_port_is_a_clear_error(tmp_path, enrolled_db):
    import socket

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = tmp_path / "gate.toml"
        config.write_text(f"[mqtt]\nport = {busy.getsockname()[1]}\n")
        before = dump(enrolled_db)
        result = gate(
            "--config", str(config), "run", "--source", str(sample_path("door.mp4")), db=enrolled_db
        )
    assert_one_line_error(result, "embedded MQTT broker", "set [mqtt] host")
    assert dump(enrolled_db) == before

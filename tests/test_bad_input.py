"""Issue 9, section 4: huge images, broken paths and times, forged JPEGs, look-alikes, names."""

from __future__ import annotations

import logging
import os
import re
import resource
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from gate.demo import sample_path
from gate.errors import ImageError, StoreError
from gate.recognition.enrollment import Refusal, enroll, examine
from gate.recognition.images import read_image
from tests.conftest import data_path

OBAMA = sample_path("people", "obama", "obama.jpg")
BIDEN = sample_path("people", "biden", "biden.jpg")


def gate(*args: str, db: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GATE_CONFIG", "GATE_DB")}
    env["GATE_DB"] = str(db)
    if config is not None:
        env["GATE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "gate", *args], capture_output=True, text=True, env=env, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def people(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("select name from people order by name")]


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid black RGB PNG, built without holding its pixels: 20000x20000 is about 1.2 MB.

    Every row compresses alike; a full flush makes the compressed rows
    independent, so one compressed block is repeated. The zlib checksum of
    zeros is ``(n mod 65521) << 16 | 1``.
    """
    row = b"\x00" * (1 + 3 * width)
    rows = max(1, (1 << 20) // len(row))
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = squeeze.compress(row * rows) + squeeze.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, rows)
    tail = squeeze.compress(row * rest) + squeeze.flush(zlib.Z_FINISH)
    checksum = ((len(row) * height) % 65521) << 16 | 1
    stream = b"\x78\xda" + block * full + tail + struct.pack(">I", checksum)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "a_huge.png"
    path.write_bytes(png_of_zeros(20000, 20000))
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_png_of_zeros_is_a_real_png(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(png_of_zeros(300, 200))
    pixels = read_image(path).pixels
    assert pixels.shape == (200, 300, 3) and not pixels.any()


def test_a_huge_image_is_refused_from_its_header(huge_png, tmp_path):
    assert huge_png.stat().st_size < 1_500_000
    before, started = peak_rss_mb(), time.monotonic()
    with pytest.raises(ImageError, match=r"image too large \(over 178 megapixels; at most 50 "):
        read_image(huge_png)
    assert time.monotonic() - started < 1.0
    assert peak_rss_mb() - before < 200  # decoding it took 2.6 GB and 12 s
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_of_zeros(10000, 6000))
    with pytest.raises(ImageError, match=r"image too large \(10000x6000 pixels; at most 50 mega"):
        read_image(wide)


def test_identify_and_enroll_refuse_a_huge_image_in_one_line(huge_png, tmp_path):
    db = tmp_path / "gate.db"
    one_line_error(gate("identify", str(huge_png), db=db), str(huge_png), "image too large")
    result = gate("enroll", "mallory", str(huge_png), db=db)
    one_line_error(result, f"refused {huge_png}: image too large (over 178 megapixels")
    assert people(db) == []


def test_a_folder_source_skips_a_huge_image_with_a_warning(huge_png, caplog):
    from gate.runtime.capture import open_source

    folder = huge_png.parent
    (folder / "b_face.jpg").write_bytes(OBAMA.read_bytes())
    source = open_source(str(folder))
    with caplog.at_level(logging.WARNING, logger="gate.capture"):
        first = source.read()
    source.close()
    assert first.shape == read_image(OBAMA).pixels.shape
    assert any("a_huge.png: image too large" in r.getMessage() for r in caplog.records)


def forged(tmp_path: Path, keep: float) -> Path:
    """The sample photo cut at ``keep`` of its length, with a JPEG end marker put back."""
    data = OBAMA.read_bytes()
    path = tmp_path / f"forged-{keep}.jpg"
    path.write_bytes(data[: int(len(data) * keep)] + b"\xff\xd9")
    return path


@pytest.mark.parametrize("keep", [0.6, 0.97])
def test_enrollment_refuses_a_truncated_jpeg_with_a_forged_end(default_pipeline, tmp_path, keep):
    refusal = examine(default_pipeline, forged(tmp_path, keep))
    assert isinstance(refusal, Refusal), "a truncated photo was accepted"
    assert refusal.reason.startswith("truncated or damaged: the image ends in flat grey")


def test_enroll_command_refuses_the_forged_jpeg(tmp_path):
    db = tmp_path / "gate.db"
    path = forged(tmp_path, 0.6)
    result = gate("enroll", "obama", str(path), db=db)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"refused {path}: truncated or damaged" in result.stderr
    assert people(db) == []


def test_a_face_of_someone_else_is_refused_unless_forced(default_pipeline, db):
    first = enroll(db, default_pipeline, "obama", [OBAMA])
    assert first.stored
    again = enroll(db, default_pipeline, "barack", [OBAMA])
    assert not again.stored and [p["name"] for p in db.people()] == ["obama"]
    (refusal,) = again.refusals
    assert refusal.source == str(OBAMA)
    assert refusal.reason.startswith("looks like obama (0.")
    assert refusal.reason.endswith("): --force to enroll anyway")
    assert enroll(db, default_pipeline, "biden", [BIDEN]).stored  # someone else passes
    forced = enroll(db, default_pipeline, "barack", [OBAMA], force=True)
    assert forced.stored and forced.refusals == []


def test_another_photo_of_the_same_person_is_refused_for_a_new_name(default_pipeline, db):
    other = data_path("people", "face_recognition", "obama", "obama3.jpg")
    assert enroll(db, default_pipeline, "obama", [OBAMA]).stored
    refused = enroll(db, default_pipeline, "barack", [other])
    assert not refused.stored
    assert refused.refusals[0].reason.startswith("looks like obama")
    more = enroll(db, default_pipeline, "obama", [other])  # their own face: fine
    assert more.stored and more.added == 1


def test_enroll_command_says_who_the_face_looks_like(tmp_path):
    db = tmp_path / "gate.db"
    assert gate("enroll", "obama", str(OBAMA), db=db).returncode == 0
    result = gate("enroll", "barack", str(OBAMA), db=db)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"refused {OBAMA}: looks like obama (0." in result.stderr
    assert people(db) == ["obama"]
    forced = gate("enroll", "--force", "barack", str(OBAMA), db=db)
    assert forced.returncode == 0, forced.stderr
    assert "--force: faces that look like someone else are enrolled too" in forced.stderr
    assert people(db) == ["barack", "obama"]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("ali\u200bce", "U+200B"),  # zero-width space
        ("\u202eecila", "U+202E"),  # right-to-left override
        ("al\u2066ice\u2069", "U+2066, U+2069"),  # isolates
        ("ali\x07ce", "U+0007"),  # control
        ("ali\u2028ce", "U+2028"),  # line separator
    ],
)
def test_names_with_hidden_characters_are_refused(db, default_pipeline, name, code):
    with pytest.raises(StoreError, match=re.escape(f"zero-width or direction characters ({code})")):
        enroll(db, default_pipeline, name, [OBAMA])
    assert db.people() == []


def test_the_name_is_checked_before_any_photo(tmp_path, db, default_pipeline):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(StoreError, match="invalid name"):
        enroll(db, default_pipeline, "bad\x07name", [missing])
    folder = tmp_path / "staff"
    for person in ("ann", "b\u200bob"):
        (folder / person).mkdir(parents=True)
        (folder / person / "photo.jpg").write_bytes(b"not even an image")
    result = gate("enroll", "--from-folder", str(folder), db=tmp_path / "cli.db")
    one_line_error(result, "invalid name 'b\\u200bob'", "U+200B")  # no photo was looked at
    assert not (tmp_path / "cli.db").exists()


def test_from_folder_prints_each_person_as_they_are_stored(tmp_path):
    folder = tmp_path / "staff"
    (folder / "a_biden").mkdir(parents=True)
    (folder / "a_biden" / "biden.jpg").write_bytes(BIDEN.read_bytes())
    (folder / "b_obama").mkdir()
    for i in range(4):
        (folder / "b_obama" / f"obama{i}.jpg").write_bytes(OBAMA.read_bytes())
    db = tmp_path / "gate.db"
    env = {k: v for k, v in os.environ.items() if k != "GATE_CONFIG"}
    env["GATE_DB"] = str(db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gate", "enroll", "--from-folder", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = proc.stdout.readline()
        stored_then = people(db)  # b_obama's photos are still being examined
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first == "enrolled a_biden: 1 photo(s)\n"
    assert stored_then == ["a_biden"]
    assert rest == "enrolled b_obama: 1 photo(s) (3 already enrolled)\n"


def test_an_empty_door_source_is_refused(tmp_path):
    db = tmp_path / "gate.db"
    for source in ("", "   "):
        result = gate("doors", "add", "front", "--source", source, db=db)
        one_line_error(result, "--source is empty")
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from doors").fetchone()[0] == 0


@pytest.mark.parametrize(
    "where",
    [
        "/proc/gate-nope/gate.db",  # a folder that cannot be made (even as root)
        "{tmp}/plain-file/gate.db",  # a database inside a file
    ],
)
def test_an_uncreatable_database_is_a_one_line_error(tmp_path, where):
    (tmp_path / "plain-file").write_text("not a folder\n")
    path = where.format(tmp=tmp_path)
    one_line_error(gate("people", "list", db=Path(path)), path, "cannot create the database")
    config = tmp_path / "gate.toml"
    config.write_text(f'database = "{path}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("GATE_CONFIG", "GATE_DB")}
    result = subprocess.run(
        [sys.executable, "-m", "gate", "--config", str(config), "people", "list"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    one_line_error(result, path, "cannot create the database")
    assert (tmp_path / "plain-file").read_text() == "not a folder\n"


def test_log_since_too_far_back_is_a_one_line_error(tmp_path):
    for since in ("99999999d", "99999999999999999999999s"):
        result = gate("log", "--since", since, db=tmp_path / "gate.db")
        one_line_error(result, since, "too far back")

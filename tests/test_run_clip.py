"""``gate run`` over the hamilton clip: grants for the two enrolled people, unlocks on a
real broker; with the broker stopped, no start, or (not required) the same decisions logged as
not delivered."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import data_path

pytestmark = pytest.mark.slow
PEOPLE = ("alex_lacamoire", "lin_manuel_miranda")


def gate(*args: str, db: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GATE_DB": str(db), "GATE_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "gate", *args], capture_output=True, text=True, env=env, timeout=600
    )


def prepare(tmp_path: Path, port: int) -> tuple[Path, Path]:
    config = tmp_path / "gate.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nack_timeout_s = 2.0\n'
        '[pipeline]\nactuators = ["mqtt", "log"]\n'
    )
    db = tmp_path / "gate.db"
    known = data_path("video", "hamilton_known")
    for person in PEOPLE:
        result = gate("enroll", person, str(known / f"{person}.png"), db=db, config=config)
        assert result.returncode == 0, result.stderr
    return db, config


def events(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select * from events order by id")]


def test_run_grants_the_enrolled_and_unlocks_over_mqtt(tmp_path, mosquitto, subscribe):
    clip = data_path("video", "hamilton_short.mp4")
    db, config = prepare(tmp_path, mosquitto.port)
    watcher = subscribe(mosquitto.port, "gate/#")
    result = gate("run", "--source", str(clip), "--door", "stage", db=db, config=config)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    logged = events(db)
    granted = [e for e in logged if e["decision"] == "granted"]
    assert {e["person"] for e in granted} == set(PEOPLE)
    assert all(e["delivered"] == 1 and e["door"] == "stage" for e in granted)
    assert all(e["latency_ms"] > 0 and e["snapshot"][:2] == b"\xff\xd8" for e in logged)
    denied = [e for e in logged if e["decision"] == "denied"]
    reasons = ("unknown", "ambiguous", "low_quality")
    assert all(e["person"] is None and e["reason"] in reasons for e in denied)
    assert all(e["track"] and e["frames"] is not None for e in logged)

    commands = [json.loads(body) for body, retained, _ in watcher.on("gate/stage/command")]
    assert not any(retained for _, retained, _ in watcher.on("gate/stage/command"))
    assert [(c["event_id"], c["person"]) for c in commands] == [
        (e["id"], e["person"]) for e in granted
    ]
    assert all(c["action"] == "unlock" and c["expires_at"] > c["issued_at"] for c in commands)
    announced = [json.loads(body)["id"] for body, *_ in watcher.on("gate/stage/event")]
    assert announced == [e["id"] for e in logged]
    assert watcher.on("gate/status")[-1][0] == b"offline"
    for line in result.stdout.splitlines():
        if " granted " in line:
            assert line.endswith("delivered")


def test_with_the_broker_stopped_decisions_are_logged_as_not_delivered(tmp_path, mosquitto):
    clip = data_path("video", "hamilton_short.mp4")
    db, config = prepare(tmp_path, mosquitto.port)
    mosquitto.stop()
    result = gate("run", "--source", str(clip), db=db, config=config)
    assert result.returncode == 1  # [mqtt] required: no start without the broker
    assert "not reachable" in result.stderr and "so gate does not start" in result.stderr
    assert events(db) == []
    config.write_text(config.read_text().replace("[mqtt]\n", "[mqtt]\nrequired = false\n"))
    result = gate("run", "--source", str(clip), db=db, config=config)
    assert result.returncode == 0, result.stderr
    assert "UNLOCKS CANNOT BE DELIVERED" in result.stderr
    granted = [e for e in events(db) if e["decision"] == "granted"]
    assert {e["person"] for e in granted} == set(PEOPLE)
    assert all(e["delivered"] == 0 for e in granted)
    assert "NOT delivered" in result.stdout

"""What the admin sees of the stated risk: ``gate calibrate``, ``people list``, ``identify``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gate.cli import cli
from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.enrollment import examine
from gate.recognition.pipeline import Pipeline
from gate.storage.database import GateDB
from tests.conftest import data_path


@pytest.fixture
def site(tmp_path, monkeypatch):
    """obama twice (under two names: look-alikes) and biden, stored from real photos."""
    monkeypatch.delenv("GATE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    people = data_path("people", "face_recognition")
    pipeline = Pipeline(parse_config({}), make_plugin_manager(entry_points=False).registry)
    db = GateDB(tmp_path / "gate.db")
    photos = {
        "obama": people / "obama" / "obama.jpg",
        "obama-again": people / "obama" / "obama2.jpg",
        "biden": people / "biden" / "biden.jpg",
    }
    for name, photo in photos.items():
        template = examine(pipeline, photo)
        assert not hasattr(template, "reason"), template
        db.enroll(name, [template])
    db.close()
    pipeline.close()
    runner = CliRunner()

    def run(*args: str, config: str | None = None) -> str:
        env = {}
        if config is not None:
            path = tmp_path / "gate.toml"
            path.write_text(config)
            env["GATE_CONFIG"] = str(path)
        result = runner.invoke(cli, ["--db", str(tmp_path / "gate.db"), *args], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    return run


def test_calibrate_states_the_risk_and_the_threshold_per_condition(site):
    data = json.loads(site("calibrate", "--json"))
    assert data["source"] == "model" and data["stated_stranger_acceptance"] == 0.005
    assert (data["people"], data["templates"]) == (3, 3)
    rows = {row["condition"]: row for row in data["conditions"]}
    assert set(rows) == {"colour", "grey", "colour-small", "grey-small"}
    assert rows["grey"]["threshold"] < rows["colour"]["threshold"]
    stated = [row["stranger_acceptance"] for row in rows.values()]
    assert stated == pytest.approx([0.005] * 4, rel=0.05)
    assert all(0.5 < row["enrolled_accepted"] <= 1 for row in rows.values())
    (pair,) = data["look_alikes"]
    assert {pair["person"], pair["other"]} == {"obama", "obama-again"}
    text = site("calibrate")
    assert "stated stranger acceptance 0.005 per face track" in text
    assert "look-alikes: obama and obama-again" in text


def test_a_fixed_threshold_is_shown_with_what_it_lets_in(site):
    text = site("calibrate", config="[recognition]\nthreshold = 0.62\n")
    assert "fixed threshold 0.62 ([recognition] threshold) overrides stranger_acceptance" in text
    data = json.loads(site("calibrate", "--json", config="[recognition]\nthreshold = 0.62\n"))
    assert data["source"] == "override"
    assert all(row["threshold"] == 0.62 for row in data["conditions"])
    assert max(row["stranger_acceptance"] for row in data["conditions"]) > 0.005


def test_people_list_flags_look_alikes(site):
    lines = {line.split("\t")[0]: line for line in site("people", "list").splitlines()}
    assert "looks like obama-again" in lines["obama"]
    assert "looks like obama (" in lines["obama-again"]
    assert "looks like" not in lines["biden"]
    listed = {row["name"]: row for row in json.loads(site("people", "list", "--json"))}
    assert listed["biden"]["looks_like"] == []


def test_identify_reports_the_threshold_and_condition_of_each_face(site):
    probe = data_path("probes", "face_recognition", "obama1.jpg")
    (report,) = json.loads(site("identify", str(probe), "--json"))
    (face,) = report["faces"]
    assert face["status"] in ("match", "ambiguous")  # obama is enrolled twice
    assert face["distance"] <= face["threshold"]
    assert face["condition"] in ("colour", "colour-small")
    assert face["quality"]["size"] > 0 and face["quality"]["grey"] is False

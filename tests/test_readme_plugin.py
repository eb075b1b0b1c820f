"""The README's plugin example is a real file, the same code, and it unlocks the demo's door."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from gate.config import parse_config
from gate.demo import sample_path
from gate.recognition.enrollment import enroll
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "buzzer.py"


def test_the_readme_shows_the_example_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Writing a plugin") :]
    shown = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = EXAMPLE.read_text(encoding="utf-8")
    assert shown.strip() in code and "def send(self, command)" in shown


def test_the_example_actuator_receives_the_unlocks(pm, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("buzzer_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pm.register_plugin(module, "buzzer-example", "0", "test")
    try:
        config = parse_config({"pipeline": {"actuators": ["buzzer"]}})
        pipeline = Pipeline(config, pm.registry)
        db = GateDB(tmp_path / "gate.db")
        for person in ("obama", "biden"):
            photo = sample_path("people", person, f"{person}.jpg")
            assert enroll(db, pipeline, person, [photo]).stored
        doors = doors_for_run(db, config, ["front"], str(sample_path("door.mp4")))
        Runner(pipeline, db.path, doors, hook=pm.hook).run()
        granted = [e for e in db.events() if e.decision == "granted"]
        assert sorted(e.person for e in granted) == ["biden", "obama"]
        assert all(e.delivered for e in granted)  # send() answered True
        printed = capsys.readouterr().out
        assert "buzz: unlock front for obama" in printed
        assert "buzz: unlock front for biden" in printed
        pipeline.close()
        db.close()
    finally:
        pm.unregister(name="buzzer-example")


def test_a_third_party_actuator_receives_a_manual_unlock(pm, tmp_path):
    """``gate doors unlock`` goes the way a face does: through every configured actuator."""
    from click.testing import CliRunner

    from gate.cli import make_cli

    spec = importlib.util.spec_from_file_location("buzzer_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pm.register_plugin(module, "buzzer-example", "0", "test")
    try:
        config = tmp_path / "gate.toml"
        config.write_text('[pipeline]\nactuators = ["buzzer", "log"]\n')
        db_path = tmp_path / "gate.db"
        gate = make_cli(pm)
        args = ["--config", str(config), "--db", str(db_path)]
        runner = CliRunner()
        added = runner.invoke(gate, [*args, "doors", "add", "side", "--source", "0"])
        assert added.exit_code == 0, added.output
        result = runner.invoke(gate, [*args, "doors", "unlock", "side", "--reason", "parcel"])
        assert result.exit_code == 0, result.output
        assert "buzz: unlock side for None" in result.output
        assert "unlock side: event 1, delivered" in result.output
        db = GateDB(db_path)
        (event,) = db.events()
        db.close()
        assert (event.decision, event.reason, event.note, event.delivered) == (
            "granted",
            "manual",
            "parcel",
            True,
        )
        locked = runner.invoke(gate, [*args, "doors", "lock", "side"])
        assert locked.exit_code == 0 and "buzz: lock side for None" in locked.output
    finally:
        pm.unregister(name="buzzer-example")

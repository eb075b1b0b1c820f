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

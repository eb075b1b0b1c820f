"""The layout holds: the core never imports its own plugins, and the door's commands never
import the training code (nor torch, which the ``dlib`` encoder does not need)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gate.demo import sample_path

ROOT = Path(__file__).resolve().parent.parent
TRAINING = "gate.recognition.metric.train"

#: Runs ``python -m gate`` with the arguments given, then prints the modules it imported.
PROBE = """
import json, runpy, sys
sys.argv = ["gate", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("gate", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("MODULES " + json.dumps(sorted(sys.modules)))
sys.exit(code)
"""


def imported_by(tree: ast.AST) -> list[str]:
    """Every module an ``import``, a ``from ... import`` or a literal
    ``importlib.import_module("...")`` in ``tree`` names."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


def gate_modules(*args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """The modules ``gate ARGS`` imported in a fresh interpreter, and its output."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    modules = json.loads(lines[-1].removeprefix("MODULES "))
    return set(modules), "\n".join(lines[:-1])


def test_the_scan_sees_every_way_of_importing_a_module():
    tree = ast.parse(
        "import a.b, c\nfrom d.e import f\nfrom . import g\n"
        "import importlib\nimportlib.import_module('h.i')\nimport_module('j')\n"
    )
    assert imported_by(tree) == ["a.b", "c", "d.e", "importlib", "h.i", "j"]


def test_no_module_of_the_core_imports_the_built_in_plugins():
    """gate_plugins are registered by name like third-party plugins; the core imports none."""
    files = sorted((ROOT / "gate").rglob("*.py"))
    assert len(files) > 20
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in imported_by(ast.parse(path.read_text(), str(path)))
        if name == "gate_plugins" or name.startswith("gate_plugins.")
    ]
    assert offenders == []


def test_gate_help_imports_neither_the_training_code_nor_torch():
    modules, output = gate_modules("--help")
    assert "train" in output and "run" in output  # every command listed, plugins' too
    assert TRAINING not in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


@pytest.mark.slow
def test_gate_run_with_the_dlib_encoder_imports_neither_the_training_code_nor_torch(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text('[pipeline]\nencoder = "dlib"\nactuators = ["log"]\n')
    env = {"GATE_DB": str(tmp_path / "gate.db"), "GATE_CONFIG": str(config)}
    for person in ("biden", "obama"):
        photo = sample_path("people", person, f"{person}.jpg")
        gate_modules("enroll", person, str(photo), env=env)
    clip = str(sample_path("door.mp4"))
    modules, output = gate_modules("run", "--source", clip, "--door", "front", env=env)
    decisions = [line.split() for line in output.splitlines() if line[:4].isdigit()]
    assert sorted(d[4] for d in decisions if d[2] == "granted") == ["biden", "obama"], output
    assert "gate_plugins.dlib_encoder" in modules
    assert TRAINING not in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}

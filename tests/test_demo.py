"""The README's first command: ``gate demo`` on the bundled samples, with its embedded broker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_grants_the_sample_people_and_shows_their_unlocks(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gate", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "enrolled biden: 1 photo(s)" in out and "enrolled obama: 1 photo(s)" in out
    decisions = [line.split() for line in out.splitlines() if line[:4].isdigit()]
    granted = [d[4] for d in decisions if d[2] == "granted"]
    assert sorted(granted) == ["biden", "obama"]
    assert [d[3] for d in decisions if d[2] == "denied"] == ["unknown", "unknown"]
    commands = [
        json.loads(line.split(": ", 1)[1])
        for line in out.splitlines()
        if line.strip().startswith("mqtt gate/front/command")
    ]
    assert sorted(c["person"] for c in commands) == ["biden", "obama"]
    assert all(c["action"] == "unlock" and c["expires_at"] > c["issued_at"] for c in commands)
    assert "mqtt gate/status: online" in out
    assert (tmp_path / "demo.db").exists()

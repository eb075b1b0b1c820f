"""``gate doctor`` on real parts: a real mosquitto, a real SQLite file, the bundled clip."""

from __future__ import annotations

import json
import sys
import types
from importlib import resources, util
from pathlib import Path

import pytest
from click.testing import CliRunner

from gate.cli import cli
from gate.demo import sample_path
from gate.recognition.enrollment import examine
from gate.storage.database import GateDB
from gate.storage.migrations import migrations
from tests.conftest import USERS, free_port

CLIP = sample_path("door.mp4")


@pytest.fixture
def site(tmp_path: Path, monkeypatch, default_pipeline):
    """A database (0600 in a 0700 folder) with door ``front`` on the bundled clip and one person
    enrolled; ``doctor(config, *args)`` runs ``gate doctor`` with that TOML."""
    for name in ("GATE_CONFIG", "GATE_DB", "GATE_MQTT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "site"
    folder.mkdir(mode=0o700)
    db = GateDB(folder / "gate.db")
    db.add_door("front", source=str(CLIP))
    template = examine(default_pipeline, sample_path("people", "obama", "obama.jpg"))
    db.enroll("obama", [template])
    db.close()

    def doctor(config: str = "", *args: str, db_path: Path | None = None):
        path = tmp_path / "gate.toml"
        path.write_text(config)
        argv = ["--config", str(path), "--db", str(db_path or folder / "gate.db"), "doctor"]
        return CliRunner().invoke(cli, [*argv, *args, "--timeout", "5"])

    doctor.db = folder / "gate.db"
    return doctor


def secure_mqtt(broker, certificates: Path, password: str = USERS["gate"]) -> str:
    """``[mqtt]`` for the TLS broker with a password file, as gate's user."""
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = true\n'
        f'ca_certs = "{certificates / "ca.crt"}"\ncertfile = "{certificates / "gate.crt"}"\n'
        f'keyfile = "{certificates / "gate.key"}"\nusername = "gate"\npassword = "{password}"\n'
    )


def lines(output: str) -> dict[str, str]:
    """Each check's line by its name."""
    found = {}
    for line in output.splitlines()[:-1]:
        name = line[6:].split(":", 1)[0]
        found[name] = line
    return found


def test_a_good_set_up_passes_with_one_line_per_check(site, secure_mosquitto, certificates):
    result = site(secure_mqtt(secure_mosquitto, certificates))
    assert result.exit_code == 0, result.output
    found = lines(result.output)
    assert all(line[:4] in ("ok  ", "warn") for line in found.values()), result.output
    assert "Traceback" not in result.output
    assert found["database"].startswith("ok    database:")
    latest = migrations._migrations[-1].name  # the schema of this version of gate
    assert f"schema {latest}, 1 people, 1 doors, private" in found["database"]
    for model in ("face_detection_yunet_2023mar.onnx", "dlib_face_recognition_resnet_model_v1.dat"):
        assert found[f"model {model}"].startswith("ok"), result.output
    assert (
        found["door front"].startswith("ok")
        and "640x480 at 10 fps, a face in frame" in (found["door front"])
    )
    broker = found["broker"]
    assert (
        broker.startswith("ok") and "(TLS): connected as gate, a message round on gate/" in broker
    )
    # the broker's ACL gives gate only gate/#: Home Assistant's status cannot be seen
    assert found["home assistant"].startswith("warn") and "fix:" in found["home assistant"]
    assert "stranger acceptance 0.005 per face track" in found["threshold"]
    assert "for 1 people, 1 templates" in found["threshold"]


def test_json_report_round_trip_not_retained_and_home_assistant_seen(site, mosquitto, subscribe):
    import paho.mqtt.publish as publish

    publish.single(
        "homeassistant/status", "online", qos=1, retain=True, hostname="127.0.0.1",
        port=mosquitto.port,
    )  # fmt: skip
    watcher = subscribe(mosquitto.port, "gate/#")
    before = site.db.stat().st_mtime_ns
    result = site(f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n', "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["broker"]["status"] == "ok" and checks["broker"]["data"]["tls"] is False
    assert checks["home assistant"]["status"] == "ok"
    assert "online (retained on homeassistant/status)" in checks["home assistant"]["detail"]
    assert checks["door front"]["data"]["size"] == [640, 480]
    assert checks["threshold"]["data"]["people"] == 1
    sent = [(t, r) for t, _p, r, _ in watcher.messages if t.startswith("gate/doctor/")]
    assert len(sent) == 1 and sent[0][1] is False  # one message, never retained
    assert not [t for t, *_ in watcher.messages if t == "gate/status"]  # not gate's voice
    assert site.db.stat().st_mtime_ns == before  # read only


def test_a_missing_camera_and_a_missing_file_fail_with_a_clear_line(site, tmp_path):
    db = GateDB(site.db)
    db.add_door("side", source="7")
    db.add_door("back", source=str(tmp_path / "gone.mp4"))
    db.close()
    result = site(f"[mqtt]\nport = {free_port()}\n")  # no broker there
    assert result.exit_code == 1, result.output
    found = lines(result.output)
    side = found["door side"]
    assert side.startswith("fail  door side: cannot open video source '7': device missing")
    assert "cameras here: /dev/video" in side or "no /dev/video* devices here" in side
    assert found["door back"].startswith(f"fail  door back: {tmp_path / 'gone.mp4'}: no such")
    assert found["door front"].startswith("ok")
    assert found["broker"].startswith("warn  broker: no [mqtt] host")  # gate is not running
    assert "Traceback" not in result.output


def test_a_wrong_broker_password_fails_saying_the_credentials_were_refused(
    site, secure_mosquitto, certificates
):
    result = site(secure_mqtt(secure_mosquitto, certificates, password="wrong"), "--json")
    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    broker = checks["broker"]
    assert broker["status"] == "fail"
    assert "refused the credentials: Not authorized" in broker["detail"]
    assert "check [mqtt] username and password" in broker["fix"]
    assert checks["home assistant"]["detail"] == "not checked: no broker"


def test_a_corrupt_model_file_fails(site, tmp_path, monkeypatch):
    """The dlib models are found as gate finds them (the face_recognition_models package):
    here a copy of that package whose 5-point predictor is damaged."""
    installed = resources.files("face_recognition_models")
    shadow = tmp_path / "face_recognition_models"
    (shadow / "models").mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    resnet = "dlib_face_recognition_resnet_model_v1.dat"
    (shadow / "models" / resnet).symlink_to(Path(str(installed / "models" / resnet)))
    damaged = bytearray(
        (installed / "models" / "shape_predictor_5_face_landmarks.dat").read_bytes()
    )
    damaged[1000] ^= 0xFF
    (shadow / "models" / "shape_predictor_5_face_landmarks.dat").write_bytes(bytes(damaged))
    spec = util.spec_from_file_location(
        "face_recognition_models", shadow / "__init__.py", submodule_search_locations=[str(shadow)]
    )
    module = types.ModuleType("face_recognition_models")
    module.__spec__, module.__file__, module.__path__ = spec, spec.origin, [str(shadow)]
    monkeypatch.setitem(sys.modules, "face_recognition_models", module)
    result = site(f"[mqtt]\nport = {free_port()}\n", "--source", str(CLIP))
    assert result.exit_code == 1, result.output
    found = lines(result.output)
    bad = found["model shape_predictor_5_face_landmarks.dat"]
    assert bad.startswith("fail") and "sha256" in bad and "reinstall" in bad
    assert found[f"model {resnet}"].startswith("ok")
    assert found["door (--source)"].startswith("ok")


def test_a_missing_database_is_reported_not_created(site, tmp_path):
    missing = tmp_path / "nowhere" / "gate.db"
    result = site(f"[mqtt]\nport = {free_port()}\n", "--json", db_path=missing)
    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["database"]["status"] == "fail"
    assert checks["database"]["detail"] == f"{missing} does not exist"
    assert not missing.parent.exists()

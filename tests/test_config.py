"""Config: defaults without a file; strict validation with errors naming the file and the key."""

from __future__ import annotations

import pytest

from gate.config import GateConfig, load_config, parse_config
from gate.errors import ConfigError
from gate.recognition.pipeline import Pipeline, check_component_sections


def write(tmp_path, text: str):
    path = tmp_path / "gate.toml"
    path.write_text(text)
    return path


def test_no_config_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("GATE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nowhere"))
    config = load_config(None)
    assert config == GateConfig()
    assert config.pipeline.detector == "yunet"
    assert config.mqtt.host is None  # embedded broker


def test_shipped_default_config_is_valid_and_equals_the_defaults():
    from tests.conftest import ROOT

    assert load_config(ROOT / "config" / "gate.toml").model_dump() == GateConfig().model_dump()


def test_every_example_config_is_valid(pm):
    from tests.conftest import ROOT

    examples = sorted((ROOT / "config" / "examples").glob("*.toml"))
    assert examples, "config/examples holds example configs"
    for path in examples:
        check_component_sections(load_config(path), pm.registry)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[decision]\nconfirm_frames = 0\n", "decision.confirm_frames: Input should be greater"),
        ("[decision]\ncooldown = 3\n", "decision.cooldown: unknown key"),
        ("colour = 'blue'\n", "colour: unknown key"),
        ("[mqtt]\nport = 'high'\n", "mqtt.port: Input should be a valid integer"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        ("[decision]\nconfirm_frames = 4\nwindow_frames = 3\n", "must not exceed window_frames"),
        ("[site]\ntimezone = 'Mars/Olympus'\n", "site.timezone: unknown time zone"),
        ("[policy]\nwithout_rules = 'maybe'\n", "policy.without_rules: Input should be"),
        ("[pipeline\n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_unknown_component_lists_the_known_ones(tmp_path, pm):
    config = load_config(write(tmp_path, "[pipeline]\ndetector = 'hog'\n"))
    with pytest.raises(ConfigError) as info:
        Pipeline(config, pm.registry)
    message = str(info.value)
    assert "pipeline.detector: unknown detector 'hog'" in message
    assert "known: dlib-hog, yunet" in message
    assert Pipeline(parse_config({}), pm.registry).config.pipeline.encoder == "dlib-torch"


def test_unknown_actuator_is_an_error(pm):
    config = parse_config({"pipeline": {"actuators": ["mqtt", "siren"]}}, "x.toml")
    with pytest.raises(ConfigError, match=r"x.toml: pipeline.actuators: unknown actuator 'siren'"):
        Pipeline(config, pm.registry)


def test_plugin_options_are_validated_by_the_plugin(pm):
    config = parse_config({"detectors": {"yunet": {"score_threshold": 2}}}, "x.toml")
    with pytest.raises(ConfigError, match=r"x.toml: detectors.yunet.score_threshold: Input should"):
        Pipeline(config, pm.registry)
    config = parse_config({"detectors": {"yunet": {"treshold": 0.5}}}, "x.toml")
    with pytest.raises(ConfigError, match=r"detectors.yunet.treshold: unknown key"):
        Pipeline(config, pm.registry)
    config = parse_config({"encoders": {"facenet": {}}}, "x.toml")
    with pytest.raises(ConfigError, match=r"encoders.facenet: unknown encoder 'facenet'"):
        Pipeline(config, pm.registry)


def test_password_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("GATE_MQTT_PASSWORD", "s3cret")
    config = parse_config({"mqtt": {"host": "broker", "username": "gate"}})
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)

"""The plugin system: built-ins registered like third-party plugins, a third-party detector
and actuator chosen by config and called by the loop, a third-party encoder and matcher
recognising faces. That every hook is documented and exercised: test_hooks_documented.py."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import ClassVar

import numpy as np
import pluggy
import pytest
from click.testing import CliRunner

from gate import hookimpl
from gate.components import Actuator, Detector, Encoder, Face, Match, Matcher
from gate.config import parse_config
from gate.plugins import BUILTIN_PLUGINS, make_plugin_manager
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner


def test_builtins_supply_the_default_components(pm):
    registry = pm.registry
    assert registry.names("detector") == ["dlib-hog", "yunet"]
    assert registry.names("encoder") == ["dlib", "dlib-torch"]
    assert registry.names("matcher") == ["faiss", "nearest"]
    assert registry.names("actuator") == ["homeassistant", "log", "mqtt", "osdp"]
    assert registry.get("detector", "yunet").plugin == "gate_plugins.yunet"
    assert set(BUILTIN_PLUGINS) <= set(pm.infos)


class StubbornDetector(Detector):
    """Reports the same face in every frame, and counts its calls."""

    name = "fixed-box"
    calls = 0

    def detect(self, image):
        type(self).calls += 1
        return [Face((10.0, 10.0, 80.0, 80.0), 0.99, None, "yunet5")]


class RecordingActuator(Actuator):
    """Remembers what it was asked to do."""

    name = "recorder"
    announced: ClassVar[list] = []

    def send(self, command):
        return True

    def announce(self, event):
        type(self).announced.append(event)


class ThirdParty:
    """A third-party plugin object, registered like any other."""

    @hookimpl
    def register_detectors(self, register):
        register(StubbornDetector)

    @hookimpl
    def register_actuators(self, register):
        register(RecordingActuator)

    def __init__(self):
        self.observed = []

    @hookimpl
    def access_decided(self, event):
        self.observed.append(event.id)


class FaultyObserver:
    @hookimpl
    def access_decided(self, event):
        raise RuntimeError("observer bug")


def test_third_party_detector_and_actuator_chosen_by_config_and_called_by_loop(pm, db, tmp_path):
    import cv2

    plugin = ThirdParty()
    pm.register_plugin(plugin, "third-party", "0.1", "test")
    pm.register_plugin(FaultyObserver(), "faulty", "0.1", "test")
    try:
        folder = tmp_path / "frames"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):  # textured, so the fixed "face" is sharp enough to be judged
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (120, 120, 3), np.uint8))
        config = parse_config(
            {
                "pipeline": {"detector": "fixed-box", "actuators": ["recorder"]},
                "decision": {"confirm_frames": 2, "window_frames": 3, "snapshots": False},
            }
        )
        pipeline = Pipeline(config, pm.registry)
        assert pm.registry.get("detector", "fixed-box").plugin == "third-party"
        StubbornDetector.calls = 0
        RecordingActuator.announced.clear()
        doors = doors_for_run(db, config, ["lab"], str(folder))
        stats = Runner(pipeline, db.path, doors, hook=pm.hook).run()["lab"]
        assert stats.frames == 4
        assert StubbornDetector.calls == 4
        # nobody is enrolled: the fixed face is unknown and denied, never granted
        assert [e.decision for e in RecordingActuator.announced] == ["denied"]
        assert RecordingActuator.announced[0].reason == "unknown"
        logged = db.events()
        assert [e.decision for e in logged] == ["denied"]
        # the broadcast hook saw the logged event; the faulty observer changed nothing
        assert plugin.observed == [logged[0].id]
    finally:
        pm.unregister(name="third-party")
        pm.unregister(name="faulty")
    assert "fixed-box" not in pm.registry.names("detector")


class MeanColourEncoder(Encoder):
    """Embeds a face as the mean colour (B, G, R) of its box: checkable by hand."""

    name = "mean-colour"
    dim = 3
    space = "mean-colour-v1"
    threshold = 10.0
    batches: ClassVar[list[int]] = []

    def encode(self, image, faces):
        type(self).batches.append(len(faces))
        boxes = [tuple(int(v) for v in face.box) for face in faces]
        means = [image[y : y + h, x : x + w].reshape(-1, 3).mean(axis=0) for x, y, w, h in boxes]
        return np.asarray(means, np.float32).reshape(len(faces), self.dim)


class NearestTemplateMatcher(Matcher):
    """The person of the nearest template, within the threshold and clear of everyone else."""

    name = "nearest-template"

    def fit(self, embeddings, person_ids):
        self.templates, self.people = np.asarray(embeddings), np.asarray(person_ids)

    def match(self, embeddings, *, threshold, min_margin):
        limits = np.broadcast_to(np.asarray(threshold, np.float64), (len(embeddings),))
        out = []
        for row, limit in zip(embeddings, limits, strict=True):
            distances = np.linalg.norm(self.templates - row, axis=1)
            best = int(distances.argmin())
            person = int(self.people[best])
            others = distances[self.people != person]
            margin = float(others.min() - distances[best]) if len(others) else float("inf")
            status = "unknown" if distances[best] > limit else "match"
            if status == "match" and margin < min_margin:
                status = "ambiguous"
            matched = person if status == "match" else None
            out.append(Match(status, matched, person, float(distances[best]), margin))
        return out


class RecognitionPlugin:
    @hookimpl
    def register_encoders(self, register):
        register(MeanColourEncoder)

    @hookimpl
    def register_matchers(self, register):
        register(NearestTemplateMatcher)


def _tinted(rng, channel: int) -> np.ndarray:
    """A textured 120 px square, sharp enough to be judged, strong in one colour channel."""
    square = rng.integers(0, 100, (120, 120, 3)).astype(np.uint8)
    square[..., channel] += 150
    return square


def test_third_party_encoder_and_matcher_chosen_by_config_recognise_faces(pm):
    pm.register_plugin(RecognitionPlugin(), "third-party-recognition", "0.1", "test")
    try:
        assert pm.registry.get("encoder", "mean-colour").plugin == "third-party-recognition"
        assert pm.registry.get("matcher", "nearest-template").plugin == "third-party-recognition"
        config = parse_config(
            {"pipeline": {"encoder": "mean-colour", "matcher": "nearest-template"}}
        )
        pipeline = Pipeline(config, pm.registry)
        rng = np.random.default_rng(0)
        blue, red, green = (_tinted(rng, channel) for channel in (0, 2, 1))
        enrolled = np.stack([blue.reshape(-1, 3).mean(0), red.reshape(-1, 3).mean(0)])
        pipeline.fit(enrolled.astype(np.float32), np.array([7, 9]))
        assert pipeline.threshold == MeanColourEncoder.threshold  # no impostor model: its own
        # the same colours in another "photo", and a colour nobody enrolled
        image = np.hstack([_tinted(rng, 0), _tinted(rng, 2), green])
        faces = [Face((120.0 * i, 0.0, 120.0, 120.0), 0.99, None, "yunet5") for i in range(3)]
        MeanColourEncoder.batches.clear()
        results = pipeline.recognise(image, faces)
        assert MeanColourEncoder.batches == [3]  # every face of the image in one batch
        assert [(r.match.status, r.match.person_id) for r in results] == [
            ("match", 7),
            ("match", 9),
            ("unknown", None),
        ]
        assert results[0].match.distance < 2.0  # another photo of the same colour
        assert results[2].match.distance > 100.0
        pipeline.close()
    finally:
        pm.unregister(name="third-party-recognition")
    assert "mean-colour" not in pm.registry.names("encoder")
    assert "nearest-template" not in pm.registry.names("matcher")


def test_duplicate_component_name_is_an_error(pm):
    class Impostor(Detector):
        name = "yunet"

    class Plugin:
        @hookimpl
        def register_detectors(self, register):
            register(Impostor)

    pm.register_plugin(Plugin(), "impostor", "0", "test")
    with pytest.raises(ValueError, match="detector 'yunet' is registered by both"):
        _ = pm.registry


def test_a_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def register_detector(self, register):  # missing "s"
            pass

    manager = make_plugin_manager(entry_points=False)
    manager.register_plugin(Typo(), "typo", "0", "test")
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'register_detector'"):
        manager.check_pending()


def _install_dist(site, name: str, module_source: str) -> None:
    """Install a plugin distribution the way pip lays one out: module + dist-info."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[gate]\n{name} = {name}\n")


def test_entry_point_plugins_load_and_broken_ones_are_reported(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _install_dist(
        site,
        "gate_buzzer",
        """
        from gate import hookimpl
        from gate.components import Actuator

        class Buzzer(Actuator):
            name = "buzzer"
            version = "2"
            delivers = False
            def send(self, command):
                return False

        @hookimpl
        def register_actuators(register):
            register(Buzzer)
        """,
    )
    _install_dist(site, "gate_broken", "raise ImportError('needs a GPIO board')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("GATE_LOAD_PLUGINS", raising=False)
    manager = make_plugin_manager()
    assert manager.registry.get("actuator", "buzzer").plugin == "gate_buzzer"
    assert manager.infos["gate_buzzer"].version == "0.3"
    assert "needs a GPIO board" in manager.infos["gate_broken"].error

    monkeypatch.setenv("GATE_LOAD_PLUGINS", "gate_broken")
    limited = make_plugin_manager()
    assert "buzzer" not in limited.registry.names("actuator")

    monkeypatch.delenv("GATE_LOAD_PLUGINS")
    import gate.plugins as plugins_module

    monkeypatch.setattr(plugins_module, "_default", None)
    from gate.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["gate_buzzer"]["components"] == ["actuator buzzer (v2)"]
    assert rows["gate_buzzer"]["source"] == "gate_buzzer"
    assert rows["gate_broken"]["error"].startswith("ImportError")
    assert rows["gate_plugins.yunet"]["components"] == ["detector yunet (v2023mar)"]
    assert rows["gate_plugins.yunet"]["hooks"] == ["register_detectors"]
    assert rows["gate_plugins.rules"]["hooks"] == ["access_policy"]
    sys.modules.pop("gate_buzzer", None)


def test_plugins_can_add_commands(pm):
    import click

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="hello-plugin")
            def hello():
                click.echo("hello from a plugin")

    from gate.cli import cli, make_cli

    pm.register_plugin(Commands(), "commands", "0", "test")
    try:
        group = make_cli(pm)
        result = CliRunner().invoke(group, ["hello-plugin"])
        assert result.output == "hello from a plugin\n"
        assert "hello-plugin" not in cli.commands  # the base group is not changed
        assert {"run", "people", "doors", "train"} <= set(group.commands)
    finally:
        pm.unregister(name="commands")

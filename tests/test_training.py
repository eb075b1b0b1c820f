"""Encoder variants: a short training run on real faces, the variant file, the dlib-torch
encoder running it, the threshold rule, and the ``gate train`` / ``gate eval`` commands."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gate.errors import ConfigError, TrainingError
from gate.recognition.metric.head import (
    VARIANT_FORMAT,
    ProjectionHead,
    apply_variant,
    backbone_state,
    load_variant,
    save_variant,
    tail_forward,
    trunk_forward,
)
from gate.recognition.metric.train import (
    DEFAULT_LOSS_OPTIONS,
    MIN_VAL_GENUINE_PAIRS,
    MIN_VAL_PEOPLE,
    NOTHING_LEARNT,
    THRESHOLD_CONFIDENCE,
    TRIPLET_MINING,
    _held_out_check,
    _threshold_from_folds,
    allowed_count,
    calibration_folds,
    choose_threshold,
    cross_fitted_threshold,
    split_people,
    train,
    validation_too_small,
)
from gate.recognition.metric.trainable import TrainableEncoder
from tests.conftest import data_path

GLINT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train" / "glint_subset"


def glint_site(root: Path, people: int, photos: int) -> Path:
    """A small site folder: the first ``photos`` photos of the first ``people`` glint people."""
    if not GLINT.is_dir():
        pytest.skip(f"shared data not available: {GLINT}")
    for person in sorted(GLINT.iterdir())[:people]:
        (root / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:photos]:
            shutil.copy(photo, root / person.name / photo.name)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """6 real people x 4 tight 112x112 face crops."""
    return glint_site(tmp_path_factory.mktemp("site"), people=6, photos=4)


@pytest.fixture(scope="module")
def base_encoder():
    from gate_plugins.dlib_torch import DlibTorchEncoder

    return DlibTorchEncoder()


@pytest.fixture(scope="module")
def detector():
    from gate_plugins.yunet import YuNetDetector

    return YuNetDetector()


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory, base_encoder, detector):
    """Two epochs of triplet training with a 64-d head."""
    out = tmp_path_factory.mktemp("variant") / "lobby.pt"
    stages = []

    class Keep(logging.Handler):
        def emit(self, record):
            stages.append(("log", record.levelname, record.getMessage()))

    keep = Keep()
    logging.getLogger("gate.train").addHandler(keep)
    try:
        result = train(
            site,
            "triplet",
            epochs=2,
            out=out,
            encoder=base_encoder,
            detector=detector,
            head_dim=64,
            val_fraction=0.34,
            augment_copies=2,
            seed=0,
            progress=lambda stage, done, total: stages.append(stage),
        )
    finally:
        logging.getLogger("gate.train").removeHandler(keep)
    return result, stages


def face_of(path: Path):
    from gate.recognition.images import read_image
    from gate.recognition.metric.folders import find_face
    from gate_plugins.yunet import YuNetDetector

    image, face, _ = find_face(YuNetDetector(), read_image(path).pixels)
    return image, face


def test_short_training_run_lowers_the_loss_and_writes_the_variant_and_metrics(trained):
    result, stages = trained
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {"faces", "encoding", "training"} <= {s for s in stages if isinstance(s, str)}
    assert result.path.is_file() and result.path.name == "lobby.pt"
    assert result.metrics_json == result.path.with_name("lobby.metrics.json")
    metrics = json.loads(result.metrics_json.read_text())
    assert len(metrics["history"]) == 3
    assert metrics["data"]["people"] == 6 and metrics["data"]["photos"] == 24
    assert metrics["data"]["val_people"] == 2
    lines = result.metrics_csv.read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,eer,tar_at_far_1e-2") and len(lines) == 4
    # the threshold rule holds on the data it was chosen on
    cal = result.validation["calibration"]
    assert cal["folds"] == 3 and cal["strangers"] == 24
    assert cal["variant_stranger_rejection"] >= cal["base_stranger_rejection"]
    assert cal["variant_impostor_rejection"] >= cal["base_impostor_rejection"]
    # ... with the margin: no more than the lower confidence bound of the base's count
    assert cal["confidence"] == THRESHOLD_CONFIDENCE == 0.95
    assert cal["strangers_allowed"] == allowed_count(cal["base_strangers_accepted"], 24)
    assert cal["variant_strangers_accepted"] <= cal["strangers_allowed"]
    assert result.threshold <= min(cal["fold_thresholds"])
    # the rule's own check on held-out folds, and its warning, logged when it fails
    check = cal["held_out"]
    assert check["strangers"] == 24 and len(check["folds"]) == 3
    assert check["base_accepted"] == sum(f["base_accepted"] for f in check["folds"])
    assert check["variant_accepted"] == sum(f["variant_accepted"] for f in check["folds"])
    assert (check["warning"] is not None) == (check["variant_accepted"] > check["base_accepted"])
    assert cal["warning"] == check["warning"]
    logged = [entry for entry in stages if entry[0] == "log"]
    assert logged == ([("log", "WARNING", check["warning"])] if check["warning"] else [])


def test_variant_file_holds_settings_and_summary_but_no_photos(trained, site):
    result, _ = trained
    data = torch.load(result.path, map_location="cpu", weights_only=True)
    assert data["format"] == VARIANT_FORMAT
    assert data["base"] == {"encoder": "dlib-torch", "space": "dlib-resnet-v1", "dim": 128}
    assert data["head"]["out_dim"] == 64 and data["head"]["kind"] == "linear"
    assert data["backbone"] == {"blocks": [], "fused": True, "state_dict": {}}
    assert data["loss"] == {"name": "triplet", "options": DEFAULT_LOSS_OPTIONS["triplet"]}
    assert data["training"]["seed"] == 0 and data["threshold"] == result.threshold
    shapes = {key: tuple(t.shape) for key, t in data["head"]["state_dict"].items()}
    assert shapes == {"net.weight": (63, 128), "log_lift": ()}  # 63 projected + the lift
    described = json.dumps({k: v for k, v in data.items() if k not in ("head", "backbone")})
    assert str(site) not in described and "Barack_Obama" not in described


def test_variant_loads_and_encodes_through_the_dlib_torch_encoder(trained, site, base_encoder):
    from gate_plugins.dlib_torch import DlibTorchEncoder, DlibTorchOptions

    result, _ = trained
    variant = load_variant(result.path)
    assert (variant.dim, variant.threshold) == (64, result.threshold)
    defaults = (DlibTorchEncoder.space, DlibTorchEncoder.dim, DlibTorchEncoder.threshold)
    encoder = DlibTorchEncoder(DlibTorchOptions(variant=str(result.path)))
    assert encoder.dim == 64 and encoder.threshold == variant.threshold
    assert encoder.space != base_encoder.space == DlibTorchEncoder.space
    assert "lobby" in encoder.space and variant.short_hash in encoder.space
    assert "variant=lobby@" in encoder.version
    image, face = face_of(next((site / "Barack_Obama").iterdir()))
    vector = encoder.encode(image, [face])
    assert vector.shape == (1, 64) and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # the same views and flips as the base encoder, then the head
    base = base_encoder.encode(image, [face])
    assert base.shape == (1, 128)
    assert np.allclose(encoder.project(base), vector, atol=1e-5)
    # the class defaults are untouched
    assert (DlibTorchEncoder.space, DlibTorchEncoder.dim, DlibTorchEncoder.threshold) == defaults


def test_a_variant_name_resolves_in_the_data_dir(trained, tmp_path, monkeypatch):
    result, _ = trained
    monkeypatch.setenv("GATE_DATA_DIR", str(tmp_path))
    (tmp_path / "encoders").mkdir()
    shutil.copy(result.path, tmp_path / "encoders" / "front-door.pt")
    variant = load_variant("front-door")
    assert variant.path == tmp_path / "encoders" / "front-door.pt"
    assert variant.space.startswith("dlib-resnet-v1+front-door-")
    assert variant.sha256 == load_variant(result.path).sha256
    with pytest.raises(ConfigError, match=r"no such file.*encoders"):
        load_variant("back-door")


def test_corrupt_or_foreign_variant_files_are_config_errors(trained, tmp_path):
    from gate_plugins.dlib_torch import DlibTorchEncoder, DlibTorchOptions

    result, _ = trained
    raw = result.path.read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "noise.pt": bytes(range(256)) * 8,
        "empty.pt": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    good = torch.load(result.path, map_location="cpu", weights_only=True)
    torch.save({**good, "format": "something-else"}, tmp_path / "format.pt")
    torch.save({**good, "base": {"encoder": "dlib", "space": "x"}}, tmp_path / "base.pt")
    torch.save({**good, "threshold": -1.0}, tmp_path / "threshold.pt")
    head = dict(good["head"], state_dict={"net.weight": torch.zeros(3, 3)})
    torch.save({**good, "head": head}, tmp_path / "shapes.pt")
    torch.save({"format": VARIANT_FORMAT, "code": Path("x")}, tmp_path / "object.pt")
    for name in [*cases, "format.pt", "base.pt", "threshold.pt", "shapes.pt", "object.pt"]:
        with pytest.raises(ConfigError, match=re.escape(name)):
            load_variant(tmp_path / name)
    with pytest.raises(ConfigError, match="no such file"):
        load_variant(tmp_path / "absent.pt")
    with pytest.raises(ConfigError, match=r"truncated\.pt"):
        DlibTorchEncoder(DlibTorchOptions(variant=str(tmp_path / "truncated.pt")))


def test_trunk_then_tail_is_the_network():
    from gate.recognition.nn.dlib_resnet import load_dlib_resnet

    model = load_dlib_resnet()
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.inference_mode():
        whole = model(x)
        for unfrozen in range(5):
            split = tail_forward(model, trunk_forward(model, x, unfrozen), unfrozen)
            assert torch.allclose(split, whole, atol=1e-4), unfrozen


def test_fine_tuned_blocks_are_stored_and_applied(tmp_path):
    from gate.recognition.nn.dlib_resnet import load_dlib_resnet

    model = load_dlib_resnet()
    state = backbone_state(model, 2)
    assert sorted({key.split(".")[0] + "." + key.split(".")[1] for key in state}) == [
        "blocks.12",
        "blocks.13",
        "fc.weight",
    ]
    changed = {key: value * 1.01 for key, value in state.items()}
    head = ProjectionHead(128, 32, hidden=16)
    record = {
        "format": VARIANT_FORMAT,
        "base": {"encoder": "dlib-torch", "space": "dlib-resnet-v1", "dim": 128},
        "head": {**head.spec(), "state_dict": head.state_dict()},
        "backbone": {"blocks": [12, 13], "fused": True, "state_dict": changed},
        "threshold": np.float64(0.9),  # numpy scalars are stored as plain floats
    }
    path = save_variant(record, tmp_path / "tuned.pt")
    variant = load_variant(path)
    assert variant.unfrozen_blocks == [12, 13] and variant.dim == 32
    fresh = load_dlib_resnet()
    loaded_head = apply_variant(fresh, variant)
    for key, value in backbone_state(fresh, 2).items():
        assert torch.equal(value, changed[key]), key
    x = torch.rand(3, 128)
    assert torch.allclose(loaded_head(x), head.eval()(x))
    with pytest.raises(ConfigError, match="last ones"):
        save_variant({**record, "backbone": {**record["backbone"], "blocks": [11]}}, path)


def test_training_with_an_unfrozen_block(tmp_path, base_encoder, detector):
    from gate_plugins.dlib_torch import DlibTorchEncoder, DlibTorchOptions

    folder = glint_site(tmp_path / "site", people=5, photos=3)
    before = backbone_state(base_encoder.model, 4)
    result = train(
        folder,
        "cosface",
        epochs=1,
        out=tmp_path / "tuned.pt",
        encoder=base_encoder,
        detector=detector,
        unfreeze_blocks=1,
        val_fraction=0.4,
        augment_copies=1,
        patience=1,
    )
    assert result.variant.unfrozen_blocks == [13]
    assert result.data["val_people"] == 2
    encoder = DlibTorchEncoder(DlibTorchOptions(variant=str(result.path)))
    image, face = face_of(next((folder / "Daniel_Radcliffe").iterdir()))
    vector = encoder.encode(image, [face])
    assert vector.shape == (1, 128) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5

    # the encoder handed to training gets its own network back, frozen, even when training
    # stops after an epoch has changed the network's tail
    class Stop(Exception):
        pass

    def stop_after_an_epoch(stage: str, done: int, total: int) -> None:
        if stage == "training":
            raise Stop

    with pytest.raises(Stop):
        train(
            folder,
            "cosface",
            epochs=1,
            out=tmp_path / "stopped.pt",
            encoder=base_encoder,
            detector=detector,
            unfreeze_blocks=1,
            val_fraction=0.4,
            augment_copies=1,
            progress=stop_after_an_epoch,
        )
    after = backbone_state(base_encoder.model, 4)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert not any(prm.requires_grad for prm in base_encoder.model.parameters())


def test_training_takes_a_trainable_base_encoder_only(trained, site, base_encoder, detector):
    from gate.components import Encoder
    from gate_plugins.dlib_torch import DlibTorchEncoder, DlibTorchOptions

    assert isinstance(base_encoder, TrainableEncoder)
    assert base_encoder.views == ["landmarks", "sp5", "flip"]

    class Fixed(Encoder):
        """An encoder with no network to adapt."""

        name = "fixed"

        def encode(self, image, faces):
            return np.zeros((len(faces), 128), np.float32)

    variant = DlibTorchEncoder(DlibTorchOptions(variant=str(trained[0].path)))
    assert isinstance(variant, TrainableEncoder)
    cases = [
        (Fixed(), "encoder 'fixed' cannot be trained"),
        (variant, r"training starts from the base network, 'dlib-resnet-v1' \(128-d\)"),
    ]
    for encoder, message in cases:
        with pytest.raises(TrainingError, match=message):
            train(site, "triplet", 1, site / "x.pt", encoder=encoder, detector=detector)
    assert not (site / "x.pt").exists()


def test_choose_threshold_never_accepts_more_than_the_base():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 1.2, 500)
    variant = rng.uniform(0.5, 1.6, 500)
    for base_threshold in (0.2, 0.6, 0.9, 2.0):
        t = choose_threshold(base, variant, base_threshold)
        assert (variant <= t).sum() <= (base <= base_threshold).sum()
        assert 0 < t <= 2.0
    accepted = int((base <= 0.6).sum())
    t = choose_threshold(base, variant, 0.6)
    ranked = np.sort(variant)
    assert (variant <= t).sum() == accepted and ranked[accepted - 1] < t < ranked[accepted]
    # nobody accepted by the base: just below the nearest variant distance
    t = choose_threshold(np.array([0.9, 1.0]), np.array([0.7, 0.8]), 0.6)
    assert t < 0.7 and t == pytest.approx(0.7)
    # ties: a tied group is accepted whole or not at all
    t = choose_threshold(np.array([0.1, 0.9, 0.9]), np.array([0.5, 0.5, 0.8]), 0.6)
    assert t < 0.5


def test_allowed_count_is_the_lower_confidence_bound_of_the_base_count():
    # nothing accepted by the base: nothing allowed
    assert allowed_count(0, 10) == allowed_count(0, 0) == 0
    # 3 of 10: were the rate 1/10, P(X >= 3) = 1 - (.3487 + .3874 + .1937) = .0702 > .05
    assert allowed_count(3, 10) == 0
    # 4 of 10: P(Bin(10, .1) >= 4) = .0128 <= .05, P(Bin(10, .2) >= 4) = .1209 > .05
    assert allowed_count(4, 10) == 1
    # 4 of 20: P(Bin(20, .05) >= 4) = .0159, P(Bin(20, .1) >= 4) = .1330
    assert allowed_count(4, 20) == 1
    # at 50%: P(Bin(10, .3) >= 4) = .3504 <= .5, P(Bin(10, .4) >= 4) = .6177 > .5
    assert allowed_count(4, 10, confidence=0.5) == 3
    # 1, 2 or 3 accepted allow none however many were tried; 10 of 90 allow 5
    assert [allowed_count(a, 90) for a in (1, 2, 3, 4, 10, 15)] == [0, 0, 0, 1, 5, 9]
    assert allowed_count(3, 100_000) == 0 and allowed_count(10, 100_000) == 5
    # always below the base's own count, and the same as a direct search
    from math import comb

    def tail(n, p, k):
        return 1 - sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k))

    for n in (5, 12, 40):
        for accepted in range(1, n + 1):
            direct = max(
                a for a in range(accepted + 1) if a == 0 or tail(n, a / n, accepted) <= 0.05
            )
            assert allowed_count(accepted, n) == direct < accepted, (n, accepted)
    with pytest.raises(TrainingError, match="confidence"):
        allowed_count(3, 10, confidence=1.0)


def test_choose_threshold_with_a_margin():
    base = np.array([0.1, 0.2, 0.3, 0.4, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2])  # 4 of 10 <= 0.6
    variant = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    # as many as the base: halfway between the 4th and the 5th smallest
    assert choose_threshold(base, variant, 0.6) == pytest.approx(0.40)
    # 4 of 10 allow 1: halfway between the 1st and the 2nd
    assert choose_threshold(base, variant, 0.6, confidence=0.95) == pytest.approx(0.10)
    # 3 of 10 allow none: just below the nearest
    t = choose_threshold(base, variant, 0.35, confidence=0.95)
    assert t < 0.05 and t == pytest.approx(0.05)


def test_cross_fitted_threshold_takes_every_fold_and_the_pooled_bound():
    # fold A: the base accepts 2 (0.5, 0.55), so may the variant: halfway 0.4 -> 0.5 = 0.45
    base_a, var_a = np.array([0.5, 0.55, 0.7, 0.8, 0.9]), np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    # fold B: the base accepts 3: halfway 0.45 -> 0.8 = 0.625
    base_b, var_b = np.array([0.4, 0.5, 0.55, 0.9, 1.0]), np.array([0.2, 0.35, 0.45, 0.8, 0.9])
    assert choose_threshold(base_a, var_a, 0.6) == pytest.approx(0.45)
    assert choose_threshold(base_b, var_b, 0.6) == pytest.approx(0.625)
    # pooled, 5 of 10 accepted allow 2 (P(Bin(10, .2) >= 5) = .0328, P(Bin(10, .3) >= 5) =
    # .1503): the variant's pooled distances 0.2 0.3 | 0.35 ...: halfway = 0.325, the smallest
    assert allowed_count(5, 10) == 2
    t = cross_fitted_threshold([base_a, base_b], [var_a, var_b], 0.6)
    assert t == pytest.approx(0.325)
    # a fold where the base accepts nobody binds: just below its nearest variant distance,
    # below the pooled bound (5 of 12 allow 2: P(Bin(12, 1/6) >= 5) = .0363,
    # P(Bin(12, 1/4) >= 5) = .1576; pooled 0.2 0.25 | 0.3: halfway = 0.275)
    base_c, var_c = np.array([0.7, 0.8]), np.array([0.25, 0.9])
    assert allowed_count(5, 12) == 2
    assert choose_threshold(
        np.r_[base_a, base_b, base_c], np.r_[var_a, var_b, var_c], 0.6, 0.95
    ) == (pytest.approx(0.275))
    t = cross_fitted_threshold([base_a, base_b, base_c], [var_a, var_b, var_c], 0.6)
    assert t < 0.25 and t == pytest.approx(0.25)
    with pytest.raises(TrainingError, match="same folds"):
        cross_fitted_threshold([base_a], [var_a, var_b], 0.6)


def test_the_held_out_check_warns_when_the_rule_fails_on_unseen_people():
    def measured(base, variant):  # the same distances for both measures, to keep it small
        base, variant = [np.array(b) for b in base], [np.array(v) for v in variant]
        return {"bn": base, "bi": base, "vn": variant, "vi": variant}

    base = [[0.7, 0.8], [0.7, 0.8], [0.5, 0.8]]  # the base accepts one photo, in fold 2
    # a variant that keeps the base's order (half its distances) passes: without fold 2, the
    # base accepts nobody and the threshold is just below 0.35, where fold 2 gets 1 in
    check = _held_out_check(measured(base, [[d / 2 for d in f] for f in base]), 0.6)
    assert [f["variant_accepted"] for f in check["folds"]] == [0, 0, 1]
    assert [f["base_accepted"] for f in check["folds"]] == [0, 0, 1]
    t = check["folds"][2]["threshold"]
    assert t < 0.35 and t == pytest.approx(0.35)
    assert (check["base_accepted"], check["variant_accepted"], check["strangers"]) == (1, 1, 6)
    assert check["warning"] is None
    # one that brings both of fold 2's photos close: without fold 2 the threshold is just
    # below 0.3, which lets both in, against the base's one
    check = _held_out_check(measured(base, [[0.3, 0.4], [0.3, 0.4], [0.1, 0.2]]), 0.6)
    assert [f["variant_accepted"] for f in check["folds"]] == [0, 0, 2]
    assert (check["base_accepted"], check["variant_accepted"]) == (1, 2)
    assert "accepted 2 of their 6 photos as strangers and the base encoder 1" in check["warning"]
    assert "gate eval" in check["warning"] and "[recognition] threshold" in check["warning"]


def test_a_failed_held_out_check_is_logged_as_a_warning(caplog):
    """The warning that ``gate train`` prints, from fold measures that fail the check and from
    ones that pass it (the training run above gives one or the other by chance)."""
    base = [np.array(fold) for fold in ([0.7, 0.8], [0.7, 0.8], [0.5, 0.8])]
    failing = [np.array(fold) for fold in ([0.3, 0.4], [0.3, 0.4], [0.1, 0.2])]
    passing = [fold / 2 for fold in base]
    for variant, warns in ((failing, True), (passing, False)):
        caplog.clear()
        measured = {"bn": base, "bi": base, "vn": variant, "vi": variant}
        with caplog.at_level(logging.WARNING, logger="gate.train"):
            chosen = _threshold_from_folds(measured, 0.6)
        assert chosen.held_out == _held_out_check(measured, 0.6)
        assert (chosen.held_out["warning"] is not None) == warns
        logged = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert logged == ([("WARNING", chosen.held_out["warning"])] if warns else [])
        assert len(chosen.fold_thresholds) == 3 and chosen.value <= min(chosen.fold_thresholds)


def test_people_not_photos_are_split_and_the_split_is_seeded():
    people = [f"p{i:02d}" for i in range(18)]
    train_people, val = split_people(people, 0.25, seed=3)
    assert len(val) == 4 and not set(val) & set(train_people)
    assert sorted(train_people + val) == people
    assert split_people(people, 0.25, seed=3) == (train_people, val)
    assert split_people(people, 0.25, seed=4) != (train_people, val)
    folds = calibration_folds(people, val, seed=3)
    assert folds[0] == val and sorted(p for fold in folds for p in fold) == people
    assert all(len(fold) >= 2 for fold in folds)
    with pytest.raises(TrainingError, match="at least"):
        split_people(people[:3], 0.25, seed=0)


def test_triplet_mining_choices_match_the_loss():
    from gate.recognition.metric.losses import MINING_STRATEGIES

    assert TRIPLET_MINING == MINING_STRATEGIES


def _cli_group():
    """``gate`` with the training plugin's commands, built on a fresh plugin manager."""
    from gate.cli import make_cli
    from gate.plugins import make_plugin_manager
    from gate_plugins import training

    pm = make_plugin_manager(entry_points=False)
    assert pm.is_registered(training)  # a built-in
    return make_cli(pm)


def test_gate_train_then_gate_eval_with_the_variant(site, tmp_path):
    from click.testing import CliRunner

    gate = _cli_group()
    assert {"train", "eval"} <= set(gate.commands)
    base_config = tmp_path / "gate.toml"
    base_config.write_text('[pipeline]\nencoder = "dlib-torch"\n')
    runner = CliRunner()
    out = tmp_path / "cli.pt"
    args = ["--config", str(base_config), "train", "--data", str(site), "--loss", "contrastive"]
    args += ["--epochs", "1", "--out", str(out), "--val-fraction", "0.34", "--augment-copies", "1"]
    args += ["--json"]
    result = runner.invoke(gate, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["variant"] == str(out) and out.is_file()
    assert Path(summary["metrics_json"]).is_file() and Path(summary["metrics_csv"]).is_file()
    assert [row["epoch"] for row in summary["epochs"]] == [0, 1]

    config = tmp_path / "variant.toml"
    config.write_text(
        f'[pipeline]\nencoder = "dlib-torch"\n[encoders.dlib-torch]\nvariant = "{out}"\n'
    )
    plots = tmp_path / "plots"
    args = ["--config", str(config), "eval", "--data", str(site), "--strangers", "2"]
    args += ["--enroll", "2", "--json", "--plots", str(plots)]
    result = runner.invoke(gate, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["encoder"]["space"] == load_variant(out).space
    assert report["threshold"] == summary["threshold"]
    ver, ident = report["verification"], report["open_set"]
    assert ver["pairs"] == 24 * 23 // 2 and 0 <= ver["eer"] <= 1
    assert set(ver) >= {"tar_at_far_1e-2", "tar_at_far_1e-3", "eer"}
    assert ident["enrolled_people"] == 4 and ident["gallery_photos"] == 8
    assert ident["known_probes"] == 8 and ident["stranger_probes"] == 8
    assert 0 <= ident["rank1"] <= 1 and 0 <= ident["stranger_rejection"] <= 1
    assert sorted(Path(p).name for p in report["plots"]) == [
        "distances.png",
        "open_set.png",
        "roc.png",
    ]
    assert all((plots / name).read_bytes()[:4] == b"\x89PNG" for name in ("roc.png",))

    bad = runner.invoke(gate, ["--config", str(base_config), "train", "--data", str(site)])
    assert bad.exit_code == 2 and "--out" in bad.output
    args = ["--config", str(base_config), "train", "--data", str(site), "--out", "x.pt"]
    wrong = runner.invoke(gate, [*args, "--loss", "arcface", "--mining", "semi_hard"])
    assert wrong.exit_code == 1 and "mining applies to the triplet loss only" in wrong.output
    untrainable = runner.invoke(gate, [*args, "--encoder", "dlib"])
    assert untrainable.exit_code == 1 and "Traceback" not in untrainable.output
    assert untrainable.output.splitlines() == [
        "Error: encoder 'dlib' cannot be trained: gate train adapts an encoder's network "
        "(trainable: dlib-torch)"
    ]


def test_tight_crops_are_padded_when_no_face_is_found_and_bad_photos_skipped(
    site, tmp_path, base_encoder
):
    from gate.components import Detector
    from gate.recognition.images import read_image
    from gate.recognition.metric.folders import encode_folder, find_face
    from gate_plugins.yunet import YuNetDetector

    class NeedsContext(Detector):
        """YuNet, but blind to faces that fill the whole image (as on tight crops)."""

        name = "needs-context"

        def __init__(self):
            super().__init__()
            self.yunet = YuNetDetector()

        def detect(self, image):
            return self.yunet.detect(image) if min(image.shape[:2]) >= 200 else []

    photo = next((site / "Barack_Obama").iterdir())
    image, face, padded = find_face(NeedsContext(), read_image(photo).pixels)
    assert padded and image.shape == (224, 224, 3)
    x, y, w, _ = face.box
    assert 40 < x < 112 and 40 < y < 112 and w > 50  # the face, in the padded image

    folder = tmp_path / "photos"
    shutil.copytree(site / "Barack_Obama", folder / "Barack_Obama")
    (folder / "Barack_Obama" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = encode_folder(folder, NeedsContext(), base_encoder)
    assert result.embeddings.shape == (4, 128) and result.padded == 4
    assert [s["reason"] for s in result.skipped] == [
        f"{folder / 'Barack_Obama' / 'broken.png'}: truncated or corrupt PNG (no IEND chunk)"
    ]


def test_an_untrained_linear_head_keeps_the_base_geometry(site, base_encoder):
    """Normalising dlib's descriptors bends their distances; the lifted head barely does."""
    from gate.recognition.metric.folders import encode_folder
    from gate_plugins.yunet import YuNetDetector

    x = torch.from_numpy(encode_folder(site, YuNetDetector(), base_encoder).embeddings)
    head = ProjectionHead(128, 128).start_at(x)
    raw = torch.cdist(x, x)
    apart = raw > 0

    def spread(embeddings: torch.Tensor) -> float:
        ratio = torch.cdist(embeddings, embeddings)[apart] / raw[apart]
        return float(ratio.std() / ratio.mean())

    with torch.no_grad():
        lifted, normalised = spread(head(x)), spread(torch.nn.functional.normalize(x, dim=1))
    assert lifted < 0.01 and lifted < normalised / 4, (lifted, normalised)
    assert torch.allclose(head(x).norm(dim=1), torch.ones(len(x)))


def test_epoch_seconds_are_the_wall_clock_time_of_each_epoch(trained):
    """Epoch 0 too (its loss pass and validation): none is 0, and together they fit in the
    training stage (which also holds torch's one-time set-up of the optimiser)."""
    result, _ = trained
    seconds = [row["seconds"] for row in result.history]
    assert all(t > 0 for t in seconds), seconds
    assert sum(seconds) <= result.timings["train_s"], (seconds, result.timings)
    rows = result.metrics_csv.read_text().splitlines()[1:]
    header = result.metrics_csv.read_text().splitlines()[0].split(",")
    column = header.index("seconds")
    assert [float(row.split(",")[column]) for row in rows] == seconds


def test_a_small_validation_and_whether_anything_was_learnt_are_said(trained):
    result, _ = trained
    # 2 of the 6 people validate, 4 photos each: 2 x 6 same-person pairs
    assert result.data["val_people"] == 2 and result.validation["genuine_pairs"] == 12
    small = result.validation["too_small"]
    assert small.startswith("validation too small to tell: 2 people, 12 same-person pairs")
    assert result.notes[0] == small
    assert result.learnt == (result.best_epoch > 0)
    assert (NOTHING_LEARNT in result.notes) == (not result.learnt)
    metrics = json.loads(result.metrics_json.read_text())
    assert metrics["learnt"] == result.learnt and metrics["notes"] == result.notes
    assert metrics["training"]["learnt"] == result.learnt
    assert result.summary()["notes"] == result.notes


def test_validation_too_small_to_tell():
    assert validation_too_small(10, 100, {"eer": 0.03}) is None
    assert validation_too_small(MIN_VAL_PEOPLE, MIN_VAL_GENUINE_PAIRS, {"eer": 0.1}) is None
    few_people = validation_too_small(4, 100, {"eer": 0.03})
    assert few_people.startswith("validation too small to tell: 4 people, 100 same-person pairs")
    assert "at least 5 people and 50 pairs" in few_people and "--val-fraction" in few_people
    few_pairs = validation_too_small(10, 40, {"eer": 0.03})
    assert few_pairs.startswith("validation too small to tell: 10 people, 40 same-person pairs")
    # already perfect at epoch 0, however many: no epoch can beat it
    perfect = validation_too_small(10, 100, {"eer": 0.0})
    assert perfect.startswith("validation too small to tell: 10 people, 100 same-person pairs")
    assert "perfectly" in perfect


def test_gate_train_says_when_nothing_was_learnt(tmp_path):
    """On the bbt crops the base encoder already separates the validation people perfectly,
    as on the issue's small site sets: epoch 0 is kept, and gate train says both plainly."""
    from click.testing import CliRunner

    bbt = data_path("people", "bbt")
    config = tmp_path / "gate.toml"
    config.write_text('[pipeline]\nencoder = "dlib-torch"\n')
    out = tmp_path / "bbt.pt"
    args = ["--config", str(config), "train", "--data", str(bbt), "--epochs", "2"]
    args += ["--patience", "1", "--augment-copies", "1", "--out", str(out)]
    result = CliRunner().invoke(_cli_group(), args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert NOTHING_LEARNT in lines
    assert any(
        line.startswith("validation too small to tell: 2 people, 20 same-person pairs")
        and "perfectly" in line
        for line in lines
    ), result.output
    kept = [line for line in lines if line.endswith("<- kept")]
    assert len(kept) == 1 and kept[0].split()[0] == "0"
    # the seconds column: real times, epoch 0 included
    table = lines[lines.index("epoch  train loss  val EER  val TAR@FAR1e-2  seconds") + 1 :][:2]
    assert [float(row.replace("<- kept", "").split()[-1]) > 0 for row in table] == [True, True]
    metrics = json.loads(out.with_name("bbt.metrics.json").read_text())
    assert metrics["learnt"] is False and metrics["training"]["best_epoch"] == 0
    assert NOTHING_LEARNT in metrics["notes"] and metrics["validation"]["too_small"]
    assert torch.load(out, weights_only=True)["training"]["learnt"] is False


def test_photo_folders_take_gif_and_pillow_formats_and_list_what_they_skip(
    site, tmp_path, base_encoder
):
    from PIL import Image

    from gate.recognition.metric.folders import NOT_A_PHOTO, encode_folder, photo_suffixes
    from gate_plugins.yunet import YuNetDetector

    assert {".gif", ".tga", ".jpg", ".png"} <= photo_suffixes()
    original = sorted((site / "Barack_Obama").iterdir())[0]
    folder = tmp_path / "photos"
    person = folder / "Barack_Obama"
    person.mkdir(parents=True)
    shutil.copy(original, person / "a.png")
    Image.open(original).save(person / "a.gif")  # palette GIF
    Image.open(original).convert("L").save(person / "a_grey.gif")
    Image.open(original).save(person / "a.tga")  # OpenCV cannot read TGA: Pillow does
    (person / "broken.gif").write_bytes(b"GIF89a and nothing more")
    (person / "notes.txt").write_text("not a photo")
    (person / ".DS_Store").write_bytes(b"hidden: ignored")
    shutil.copy(original, folder / "loose.png")

    result = encode_folder(folder, YuNetDetector(), base_encoder)
    assert [p.name for p in result.paths] == ["a.gif", "a.png", "a.tga", "a_grey.gif"]
    vectors = dict(zip((p.name for p in result.paths), result.embeddings, strict=True))
    assert np.allclose(vectors["a.tga"], vectors["a.png"], atol=1e-5)
    assert np.linalg.norm(vectors["a.gif"] - vectors["a.png"]) < 0.15
    assert np.linalg.norm(vectors["a_grey.gif"] - vectors["a.png"]) < 0.25
    reasons = {Path(s["photo"]).name: s["reason"] for s in result.skipped}
    assert reasons == {
        "notes.txt": NOT_A_PHOTO,
        "loose.png": "not in a person's subfolder",
        "broken.gif": f"{person / 'broken.gif'}: not an image, or corrupt",
    }


def test_folders_without_a_readable_image_say_so(tmp_path, base_encoder):
    from click.testing import CliRunner

    from gate.recognition.metric.folders import encode_folder, person_folders
    from gate_plugins.yunet import YuNetDetector

    with pytest.raises(TrainingError, match="no subfolders"):
        person_folders(tmp_path)
    # person folders with nothing in a photo format
    for name in ("amy", "raj"):
        (tmp_path / "notes" / name).mkdir(parents=True)
        (tmp_path / "notes" / name / "notes.txt").write_text("not a photo")
    skipped = []
    with pytest.raises(TrainingError, match="no readable images in its 2 person folder") as info:
        person_folders(tmp_path / "notes", skipped)
    assert "no subfolders" not in str(info.value) and len(skipped) == 2
    # photo files none of which decodes
    (tmp_path / "broken" / "amy").mkdir(parents=True)
    (tmp_path / "broken" / "amy" / "amy.gif").write_bytes(b"GIF89a and nothing more")
    (tmp_path / "broken" / "amy" / "amy.jpg").write_bytes(b"")
    with pytest.raises(TrainingError, match="no readable images among its 2 photo file"):
        encode_folder(tmp_path / "broken", YuNetDetector(), base_encoder)
    # readable photos without a face
    no_face = data_path("negatives", "no_face")
    (tmp_path / "things" / "coffee").mkdir(parents=True)
    for name in ("coffee.png", "white.png"):
        shutil.copy(no_face / name, tmp_path / "things" / "coffee" / name)
    with pytest.raises(TrainingError, match="no face found in any of its 2 readable photo"):
        encode_folder(tmp_path / "things", YuNetDetector(), base_encoder)
    # the commands: one clear line, no traceback
    config = tmp_path / "gate.toml"
    config.write_text('[pipeline]\nencoder = "dlib-torch"\n')
    runner = CliRunner()
    for command in (["eval"], ["train", "--out", str(tmp_path / "x.pt")]):
        for data in ("notes", "broken"):
            args = ["--config", str(config), *command, "--data", str(tmp_path / data)]
            result = runner.invoke(_cli_group(), args)
            assert result.exit_code == 1, result.output
            assert "no readable images" in result.output and "Traceback" not in result.output
            assert result.output.count("Error:") == 1, result.output

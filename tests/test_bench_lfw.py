"""``gate bench lfw`` and ``gate encode`` on a few real LFW pairs, in both pair-file formats."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from gate.cli import cli
from tests.conftest import data_path

SAME = [
    ["Abdullah_Gul", "13", "14"],
    ["Abdullatif_Sener", "1", "2"],
    ["Adel_Al-Jubeir", "1", "3"],
    ["Abdullah_Gul", "13", "16"],
]
DIFFERENT = [
    ["AJ_Lamas", "1", "Zach_Safrin", "1"],
    ["Aaron_Guiel", "1", "Reese_Witherspoon", "3"],
    ["Aaron_Tippin", "1", "Jose_Luis_Rodriguez_Zapatero", "1"],
    ["Abdul_Majeed_Shobokshi", "1", "Charles_Cope", "1"],
]


def write_pairs(path, header: str, blocks: list[tuple[list, list]]) -> None:
    lines = [header]
    for same, different in blocks:
        lines += ["\t".join(p) for p in same] + ["\t".join(p) for p in different]
    path.write_text("\n".join(lines) + "\n")


def bench(tmp_path, *args):
    root = data_path("lfw-view1", "images")
    result = CliRunner().invoke(
        cli, ["--db", str(tmp_path / "g.db"), "bench", "lfw", "--root", str(root), *args, "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_view1_format_with_training_pairs_and_a_roc_plot(tmp_path):
    train, test = tmp_path / "pairsDevTrain.txt", tmp_path / "pairsDevTest.txt"
    write_pairs(train, "2", [(SAME[:2], DIFFERENT[:2])])
    write_pairs(test, "2", [(SAME[2:], DIFFERENT[2:])])
    roc = tmp_path / "roc.png"
    report = bench(tmp_path, "--pairs", str(test), "--train-pairs", str(train), "--roc", str(roc))
    assert report["pairs"] == 4 and report["images"] == 15
    assert report["protocol"].startswith("threshold from pairsDevTrain.txt")
    assert report["accuracy"] == 1.0 and report["eer"] == 0.0
    assert 0.3 < report["threshold"] < 0.9
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_official_ten_fold_format_chooses_each_threshold_on_the_other_folds(tmp_path):
    pairs = tmp_path / "pairs.txt"
    write_pairs(pairs, "2\t2", [(SAME[:2], DIFFERENT[:2]), (SAME[2:], DIFFERENT[2:])])
    report = bench(tmp_path, "--pairs", str(pairs))
    assert report["pairs"] == 8
    assert report["protocol"] == "2-fold, threshold from the other folds"
    assert report["accuracy"] == 1.0 and report["tar_at_far_1e-3"] == 1.0


def test_a_malformed_pair_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("1\nAbdullah_Gul\tx\t14\nAJ_Lamas\t1\tZach_Safrin\t1\n")
    root = data_path("lfw-view1", "images")
    result = CliRunner().invoke(cli, ["bench", "lfw", "--pairs", str(bad), "--root", str(root)])
    assert result.exit_code == 1
    assert "pairs.txt, line 2" in result.output and "Traceback" not in result.output


def test_encode_writes_every_face_with_its_box_and_image(tmp_path):
    photos = [data_path("lfw-view1", "images", "AJ_Lamas", "AJ_Lamas_0001.jpg"),
              data_path("multi", "face_recognition_two_people.jpg")]  # fmt: skip
    out = tmp_path / "faces.npz"
    result = CliRunner().invoke(cli, ["encode", *map(str, photos), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["embeddings"].shape[1] == 128
    assert len(saved["embeddings"]) == len(saved["boxes"]) == len(saved["image"]) >= 3
    assert set(saved["image"].tolist()) == {0, 1}
    assert str(saved["encoder"]).startswith("dlib-torch")

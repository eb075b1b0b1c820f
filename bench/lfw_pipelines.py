"""LFW View 1, side by side in one run: dlib's own pipeline against gate's.

dlib's pipeline is what the face_recognition library does: HOG detector with one
upsample, the 5-point predictor, ``compute_face_descriptor`` (gate's built-in
``dlib-hog`` detector and ``dlib`` encoder). gate's is YuNet and the torch port,
with its views (landmark alignment, the 5-point predictor on the box, mirror
images) also measured one by one. Every pipeline is scored two ways:
the View 1 protocol (threshold from pairsDevTrain, accuracy on pairsDevTest)
and 10-fold cross-validation over all 3,200 View 1 pairs.

    python bench/lfw_pipelines.py [--data ../shared/data/lfw-view1] [--roc docs/lfw-roc.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.evaluation import (
    accuracy_with_train_threshold,
    eer,
    kfold_accuracy,
    plot_roc,
    roc,
    tar_at_far,
)
from gate.recognition.images import read_image
from gate.recognition.lfw import read_pairs, unique_images
from gate.recognition.lfw_protocol import centre_face, pair_distances
from gate.recognition.pipeline import Pipeline

PIPELINES = {
    "dlib (HOG, 5-point, compute_face_descriptor)": ("dlib-hog", "dlib", {}),
    "gate: YuNet + torch, landmarks": (
        "yunet",
        "dlib-torch",
        {"alignments": ["landmarks"], "flip": False},
    ),
    "gate: YuNet + torch, 5-point on box": (
        "yunet",
        "dlib-torch",
        {"alignments": ["sp5"], "flip": False},
    ),
    "gate: YuNet + torch, landmarks + flip": ("yunet", "dlib-torch", {"alignments": ["landmarks"]}),
    "gate: YuNet + torch, 5-point + flip": ("yunet", "dlib-torch", {"alignments": ["sp5"]}),
    "gate default: YuNet + torch, both views + flip": ("yunet", "dlib-torch", {}),
}


def operating_points(distances: np.ndarray, same: np.ndarray) -> list[str]:
    """TAR and FAR at fixed thresholds, and the thresholds for FAR targets."""
    out = []
    for threshold in (0.5, 0.55, 0.6):
        accept = distances <= threshold
        out.append(
            f"{threshold}: {accept[same].mean() * 100:.1f}% / {accept[~same].mean() * 100:.2f}%"
        )
    for far in (1e-3, 3e-3):
        tar, threshold = tar_at_far(distances, same, far)
        out.append(f"FAR<={far:g} at {threshold:.3f} (TAR {tar * 100:.1f}%)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/lfw-view1")
    parser.add_argument("--roc", default="docs/lfw-view1-roc.png")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--only", default=None, help="run only pipelines whose label has this")
    args = parser.parse_args()
    data = Path(args.data)
    root = data / "images"
    train = read_pairs(data / "pairsDevTrain.txt")
    test = read_pairs(data / "pairsDevTest.txt")
    paths = unique_images(train.pairs + test.pairs, root)
    images = {p: read_image(p).pixels for p in paths}
    registry = make_plugin_manager(entry_points=False).registry
    both = type(test)(train.pairs + test.pairs, 1)
    folds = np.arange(len(both)) % 10

    detections: dict[str, dict] = {}
    rows, curves = [], {}
    chosen = {k: v for k, v in PIPELINES.items() if not args.only or args.only in k}
    thresholds = []
    for label, (detector, encoder, options) in chosen.items():
        config = parse_config(
            {"pipeline": {"detector": detector, "encoder": encoder}, "encoders": {encoder: options}}
        )
        pipeline = Pipeline(config, registry)
        started = time.perf_counter()
        if detector not in detections:
            found = {}
            for p in paths:
                faces = pipeline.detector.detect(images[p])
                h, w = images[p].shape[:2]
                found[p] = (centre_face(faces, w, h), bool(faces))
            detections[detector] = found
        detected = time.perf_counter() - started
        found = detections[detector]
        started = time.perf_counter()
        embeddings = {p: pipeline.encoder.encode(images[p], [found[p][0]])[0] for p in paths}
        encoded = time.perf_counter() - started
        d_train = pair_distances(train, root, embeddings)
        d_test = pair_distances(test, root, embeddings)
        acc, threshold = accuracy_with_train_threshold(d_train, train.same, d_test, test.same)
        d_all = pair_distances(both, root, embeddings)
        cv = kfold_accuracy(d_all, both.same, folds)
        curves[label] = roc(d_all, both.same)
        rows.append(
            {
                "pipeline": label,
                "no_face": sum(not ok for _, ok in found.values()),
                "view1_accuracy": acc,
                "view1_threshold": threshold,
                "view1_eer": eer(d_test, test.same)[0],
                "view1_tar_far_1e-3": tar_at_far(d_test, test.same, 1e-3)[0],
                "cv10_accuracy": cv.mean,
                "cv10_std": cv.std,
                "all_eer": eer(curves[label])[0],
                "all_tar_far_1e-3": tar_at_far(d_all, both.same, 1e-3)[0],
                "encode_ms_per_image": 1000 * encoded / len(paths),
                "detect_ms_per_image": 1000 * detected / len(paths) if detected > 1e-3 else None,
            }
        )
        pipeline.close()
        print(json.dumps(rows[-1]), flush=True)
        thresholds.append((label, operating_points(d_train, train.same)))

    print()
    print(
        "| pipeline | no face | View 1 acc. | EER | TAR@FAR1e-3 "
        "| 10-fold acc. (3,200) | EER | TAR@FAR1e-3 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pipeline']} | {r['no_face']} | {r['view1_accuracy'] * 100:.2f}% "
            f"| {r['view1_eer'] * 100:.2f}% | {r['view1_tar_far_1e-3'] * 100:.1f}% "
            f"| {r['cv10_accuracy'] * 100:.2f}% ± {r['cv10_std'] * 100:.2f} "
            f"| {r['all_eer'] * 100:.2f}% | {r['all_tar_far_1e-3'] * 100:.1f}% |"
        )
    print("\nOperating points on DevTrain (genuine accepted / impostors accepted):")
    for label, points in thresholds:
        print(f"  {label}: " + "; ".join(points))
    plot_roc(curves, args.roc, title="LFW View 1, all 3,200 pairs")
    print(f"\nROC: {args.roc}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""The LFW verification protocol run on any pipeline: encode each image once, score the pairs.

With a 10-fold ``pairs.txt`` the threshold for each fold is chosen on the other
nine. With View 1 (one fold) the threshold comes from ``--train-pairs`` when
given, else the pairs are split into 10 folds by position. LFW photos are
centred on the person the pair names, so the detected face nearest the image
centre is used; a photo where no face is found is encoded from a centred box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gate.components import Face
from gate.recognition.evaluation import (
    FoldResult,
    Roc,
    accuracy_with_train_threshold,
    eer,
    kfold_accuracy,
    roc,
    tar_at_far,
)
from gate.recognition.images import read_image
from gate.recognition.lfw import PairSet, read_pairs, unique_images
from gate.recognition.pipeline import Pipeline


def centre_face(faces: Sequence[Face], width: int, height: int) -> Face:
    """The face nearest the image centre, or a centred box when there is none."""
    centre = np.array([width / 2, height / 2])
    if faces:
        return min(
            faces,
            key=lambda f: np.hypot(*(np.array(f.box[:2]) + np.array(f.box[2:]) / 2 - centre)),
        )
    return Face((0.3 * width, 0.3 * height, 0.4 * width, 0.4 * height), 0.0, None)


def encode_images(
    pipeline: Pipeline, paths: Sequence[Path], progress: Callable[[int], None] | None = None
) -> tuple[dict[Path, np.ndarray], list[Path]]:
    """The centre face's embedding of every image, and the images where no face was found."""
    embeddings, missed = {}, []
    for path in paths:
        pixels = read_image(path).pixels
        faces = pipeline.detector.detect(pixels)
        if not faces:
            missed.append(path)
        face = centre_face(faces, pixels.shape[1], pixels.shape[0])
        embeddings[path] = pipeline.encoder.encode(pixels, [face])[0]
        if progress:
            progress(1)
    return embeddings, missed


def pair_distances(pairs: PairSet, root: Path, embeddings: dict[Path, np.ndarray]) -> np.ndarray:
    """Euclidean distance of every pair, in file order."""
    return np.array(
        [
            float(np.linalg.norm(embeddings[a] - embeddings[b]))
            for a, b in (p.paths(root) for p in pairs)
        ]
    )


@dataclass
class LfwReport:
    """What one protocol run measured."""

    pairs: int
    images: int
    missed: int
    protocol: str
    accuracy: float
    spread: float
    threshold: float
    eer: float
    tar_at_far_1e3: float
    different_pairs: int
    roc: Roc
    folds: FoldResult | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready numbers (no arrays)."""
        return {
            "pairs": self.pairs,
            "images": self.images,
            "images_without_face": self.missed,
            "protocol": self.protocol,
            "accuracy": round(self.accuracy, 5),
            "accuracy_std": round(self.spread, 5),
            "threshold": round(self.threshold, 4),
            "eer": round(self.eer, 5),
            "tar_at_far_1e-3": round(self.tar_at_far_1e3, 5),
            "different_pairs": self.different_pairs,
        }


def run_protocol(
    pipeline: Pipeline,
    pairs_file: Path,
    root: Path,
    train_file: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> LfwReport:
    """Score a pair file (and its training pairs, if any) with ``pipeline``."""
    test = read_pairs(pairs_file)
    train = read_pairs(train_file) if train_file else None
    paths = unique_images(test.pairs + (train.pairs if train else []), root)
    embeddings, missed = encode_images(pipeline, paths, progress)
    distances = pair_distances(test, root, embeddings)
    same = test.same
    folds = None
    if test.folds > 1:
        folds = kfold_accuracy(distances, same, test.fold_labels)
        protocol = f"{test.folds}-fold, threshold from the other folds"
        accuracy, spread = folds.mean, folds.std
        threshold = float(np.mean(folds.thresholds))
    elif train is not None:
        train_d = pair_distances(train, root, embeddings)
        accuracy, threshold = accuracy_with_train_threshold(train_d, train.same, distances, same)
        spread = float(np.sqrt(accuracy * (1 - accuracy) / len(same)))
        protocol = f"threshold from {Path(train_file).name}, spread = binomial standard error"
    else:
        folds = kfold_accuracy(distances, same, np.arange(len(same)) % 10)
        protocol = "10 folds by position, threshold from the other folds"
        accuracy, spread = folds.mean, folds.std
        threshold = float(np.mean(folds.thresholds))
    curve = roc(distances, same)
    return LfwReport(
        pairs=len(same),
        images=len(paths),
        missed=len(missed),
        protocol=protocol,
        accuracy=accuracy,
        spread=spread,
        threshold=threshold,
        eer=eer(curve)[0],
        tar_at_far_1e3=tar_at_far(distances, same, 1e-3)[0],
        different_pairs=int((~same).sum()),
        roc=curve,
        folds=folds,
    )

"""Photo folders with one subfolder per person: their faces, found once, and embeddings.

What ``gate train``, ``gate eval`` and ``bench/site_adaptation.py`` read. A tight crop in
which the detector finds nothing is padded by half its size (edges replicated) and tried
again; unreadable photos and photos without a face are listed, not fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gate.errors import GateError, TrainingError

if TYPE_CHECKING:
    from gate.components import Detector, Encoder, Face

#: ``progress(stage, done, total)``; stages ``faces``, ``encoding`` and ``training`` (epochs).
Progress = Callable[[str, int, int], None]


def person_folders(data_dir: str | os.PathLike[str]) -> list[tuple[str, list[Path]]]:
    """``(person, photos)`` for every subfolder of ``data_dir`` holding images, sorted."""
    from gate.images import list_images

    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"{root}: not a folder")
    people = [(d.name, list_images(d)) for d in sorted(root.iterdir()) if d.is_dir()]
    people = [(name, photos) for name, photos in people if photos]
    if not people:
        raise TrainingError(f"{root}: no subfolders with images (one subfolder per person)")
    return people


def find_face(detector: Detector, image: np.ndarray) -> tuple[np.ndarray, Face, bool] | None:
    """The largest face, as ``(image, face, padded)``; None when there is none.

    When nothing is found the image is padded by half its longer side on every edge (edges
    replicated: tight aligned crops, such as 112x112 training sets, leave a detector no
    context) and searched again; the face is then given in the padded image.
    """
    from gate.images import cv2

    faces = detector.detect(image)
    padded = False
    if not faces:
        pad = max(image.shape[:2]) // 2
        cv = cv2()
        image = cv.copyMakeBorder(image, pad, pad, pad, pad, cv.BORDER_REPLICATE)
        faces = detector.detect(image)
        padded = True
    if not faces:
        return None
    return image, max(faces, key=lambda f: f.size), padded


def faces_of(
    people: Sequence[tuple[str, list[Path]]],
    detector: Detector,
    progress: Progress | None,
    skipped: list[dict[str, str]],
) -> Iterator[tuple[str, Path, np.ndarray, Face, bool]]:
    """Every photo's largest face; unreadable photos and photos without one go to ``skipped``."""
    from gate.images import read_image

    total = sum(len(photos) for _, photos in people)
    done = 0
    for person, photos in people:
        for path in photos:
            done += 1
            try:
                found = find_face(detector, read_image(path).pixels)
            except GateError as exc:
                skipped.append({"photo": str(path), "reason": str(exc)})
                found = None
            else:
                if found is None:
                    skipped.append({"photo": str(path), "reason": "no face found"})
            if found is not None:
                yield (person, path, *found)
            if progress:
                progress("faces", done, total)


@dataclass
class FolderEmbeddings:
    """One embedding per photo whose face was found, with its person and path."""

    embeddings: np.ndarray
    people: list[str]
    paths: list[Path]
    skipped: list[dict[str, str]]
    padded: int

    def ids(self) -> np.ndarray:
        """Integer person ids, in order of first appearance."""
        index: dict[str, int] = {}
        return np.asarray([index.setdefault(p, len(index)) for p in self.people], np.int64)


def encode_folder(
    data_dir: str | os.PathLike[str],
    detector: Detector,
    encoder: Encoder,
    progress: Progress | None = None,
    batch: int = 16,
) -> FolderEmbeddings:
    """Embed the largest face of every photo of a one-subfolder-per-person folder.

    Uses ``encoder.encode_many`` when it has one (shared forward passes), else ``encode``.
    """
    people, paths, vectors, pending = [], [], [], []
    skipped: list[dict[str, str]] = []
    padded = 0
    many = getattr(encoder, "encode_many", None)

    def flush() -> None:
        items = [(image, [face]) for image, face in pending]
        if many is not None:
            vectors.extend(v[0] for v in many(items))
        else:
            vectors.extend(encoder.encode(image, faces)[0] for image, faces in items)
        pending.clear()

    for person, path, image, face, was_padded in faces_of(
        person_folders(data_dir), detector, progress, skipped
    ):
        people.append(person)
        paths.append(path)
        padded += was_padded
        pending.append((image, face))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    array = np.asarray(vectors, np.float32).reshape(len(people), -1)
    return FolderEmbeddings(array, people, paths, skipped, padded)

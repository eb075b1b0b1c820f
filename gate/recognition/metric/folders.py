"""Photo folders with one subfolder per person: their faces, found once, and embeddings.

What ``gate train``, ``gate eval`` and ``bench/site_adaptation.py`` read. A photo is any file
OpenCV or Pillow reads (GIF, TGA, ICO and the like through Pillow when OpenCV cannot). A tight
crop in which the detector finds nothing is padded by half its size (edges replicated) and
tried again. Files that are not photos, unreadable photos and photos without a face are
listed with the reason, not fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gate.errors import GateError, ImageError, TrainingError

if TYPE_CHECKING:
    from gate.components import Detector, Encoder, Face

#: ``progress(stage, done, total)``; stages ``faces``, ``encoding`` and ``training`` (epochs).
Progress = Callable[[str, int, int], None]

#: Formats OpenCV decodes besides those of ``gate.recognition.images.IMAGE_SUFFIXES``.
OPENCV_SUFFIXES = frozenset(
    {".gif", ".jpe", ".jp2", ".pbm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".hdr", ".pic"}
)
NOT_A_PHOTO = "not an image format OpenCV or Pillow reads"


@cache
def photo_suffixes() -> frozenset[str]:
    """File name endings read as photos: gate's own, OpenCV's other ones, all Pillow opens."""
    from PIL import Image

    from gate.recognition.images import IMAGE_SUFFIXES

    Image.init()
    pillow = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(IMAGE_SUFFIXES | OPENCV_SUFFIXES | pillow)


def _pillow_pixels(path: Path) -> np.ndarray | None:
    """BGR pixels of the first frame Pillow decodes from ``path``; None when it cannot."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.seek(0)
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception:  # Pillow's decoders raise all sorts on bad files: unreadable is the answer
        return None
    if rgb.ndim != 3 or rgb.size == 0:
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_photo(path: str | os.PathLike[str]) -> np.ndarray:
    """A photo's pixels (BGR uint8) by OpenCV, or else by Pillow; :class:`ImageError` if neither.

    For the formats gate reads everywhere (``images.IMAGE_SUFFIXES``) OpenCV's verdict
    stands, its checks for truncated files included; Pillow reads the others when OpenCV
    cannot (GIF in older OpenCV builds, TGA, ICO, PCX, ...).
    """
    from gate.recognition.images import IMAGE_SUFFIXES, read_image

    path = Path(path)
    try:
        return read_image(path).pixels
    except ImageError:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise
        pixels = _pillow_pixels(path)
        if pixels is None:
            raise
        return pixels


def person_folders(
    data_dir: str | os.PathLike[str], skipped: list[dict[str, str]] | None = None
) -> list[tuple[str, list[Path]]]:
    """``(person, photos)`` for every subfolder of ``data_dir`` holding photos, sorted.

    Other files (in the subfolders or loose in ``data_dir``) go to ``skipped`` with the
    reason; hidden files are ignored.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"{root}: not a folder")
    suffixes = photo_suffixes()
    found: list[dict[str, str]] = []

    def skip(path: Path, reason: str) -> None:
        found.append({"photo": str(path), "reason": reason})

    people, folders = [], 0
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            skip(entry, "not in a person's subfolder")
            continue
        folders += 1
        photos = []
        for path in sorted(entry.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                skip(path, "a folder inside a person's folder (photos go directly in it)")
            elif path.suffix.lower() in suffixes:
                photos.append(path)
            else:
                skip(path, NOT_A_PHOTO)
        if photos:
            people.append((entry.name, photos))
    if skipped is not None:
        skipped.extend(found)
    if not folders:
        raise TrainingError(f"{root}: no subfolders (one subfolder of photos per person)")
    if not people:
        raise TrainingError(
            f"{root}: no readable images in its {folders} person folder(s){_first(found)}"
        )
    return people


def describe_skip(skip: dict[str, str]) -> str:
    """``photo: reason`` for a skipped file, its path said once."""
    photo, reason = skip["photo"], skip["reason"]
    return reason if reason.startswith(f"{photo}: ") else f"{photo}: {reason}"


def _first(skipped: Sequence[dict[str, str]]) -> str:
    """`` (N file(s) skipped; first: photo: reason)``, or nothing when none was."""
    if not skipped:
        return ""
    return f" ({len(skipped)} file(s) skipped; first: {describe_skip(skipped[0])})"


def find_face(detector: Detector, image: np.ndarray) -> tuple[np.ndarray, Face, bool] | None:
    """The largest face, as ``(image, face, padded)``; None when there is none.

    When nothing is found the image is padded by half its longer side on every edge (edges
    replicated: tight aligned crops, such as 112x112 training sets, leave a detector no
    context) and searched again; the face is then given in the padded image.
    """
    from gate.recognition.images import cv2

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
    """Every photo's largest face; unreadable photos and photos without one go to ``skipped``.

    Raises :class:`TrainingError` at the end when no photo could be read, or none had a face.
    """
    total = sum(len(photos) for _, photos in people)
    done = readable = faces = 0
    before = len(skipped)
    for person, photos in people:
        for path in photos:
            done += 1
            found = None
            try:
                pixels = read_photo(path)
                readable += 1
                found = find_face(detector, pixels)
            except GateError as exc:
                skipped.append({"photo": str(path), "reason": str(exc)})
            else:
                if found is None:
                    skipped.append({"photo": str(path), "reason": "no face found"})
            if found is not None:
                faces += 1
                yield (person, path, *found)
            if progress:
                progress("faces", done, total)
    if total and not faces:
        root = people[0][1][0].parent.parent
        if not readable:
            problem = f"no readable images among its {total} photo file(s)"
        else:
            problem = f"no face found in any of its {readable} readable photo(s)"
        raise TrainingError(f"{root}: {problem}{_first(skipped[before:])}")


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
        person_folders(data_dir, skipped), detector, progress, skipped
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

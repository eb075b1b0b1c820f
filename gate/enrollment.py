"""Enrollment: which photos may become face templates, and storing them all or nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gate.database import GateDB, Template
from gate.errors import ImageError
from gate.images import encode_jpeg, face_region, face_to_json, read_image
from gate.pipeline import Pipeline
from gate.quality import measure


@dataclass(frozen=True)
class Refusal:
    """A photo that cannot be enrolled, and why."""

    source: str
    reason: str


def examine(pipeline: Pipeline, path: str | Path) -> Template | Refusal:
    """Check one photo: exactly one usable face, big and sharp enough; then encode it."""
    rules = pipeline.config.enrollment
    try:
        image = read_image(path)
    except ImageError as exc:
        return Refusal(str(path), str(exc).removeprefix(f"{path}: "))
    faces = pipeline.detector.detect(image.pixels)
    if not faces:
        return Refusal(str(path), "no face found")
    big = [f for f in faces if f.size >= rules.min_face_px]
    if len(big) > 1:
        return Refusal(str(path), f"{len(big)} faces found; an enrollment photo must show one")
    face = max(faces, key=lambda f: f.size)
    if face.size < rules.min_face_px:
        return Refusal(
            str(path), f"face too small ({face.size:.0f} px, need {rules.min_face_px} px)"
        )
    quality = measure(image.pixels, face)
    if quality.sharpness < rules.min_sharpness:
        return Refusal(
            str(path),
            f"face too blurred (sharpness {quality.sharpness:.2f}, need {rules.min_sharpness:g})",
        )
    if abs(quality.yaw) > rules.max_yaw:
        return Refusal(
            str(path),
            f"face turned away (yaw {quality.yaw:+.2f}, at most {rules.max_yaw:g}): "
            "enroll a photo facing the camera",
        )
    if face.score < rules.min_detector_score:
        return Refusal(
            str(path),
            f"unclear face (detector score {face.score:.2f}, need {rules.min_detector_score:g})",
        )
    encoder = pipeline.encoder
    vector = encoder.encode(image.pixels, [face])[0]
    crop, crop_face = face_region(image.pixels, face, pad=0.6, face_px=300)
    return Template(
        embedding=vector,
        encoder=encoder.name,
        encoder_version=encoder.version,
        space=encoder.space,
        source_sha256=image.sha256,
        source_name=image.name,
        face_size=face.size,
        quality=quality.sharpness,
        face_crop=encode_jpeg(crop, quality=95),
        crop_face=face_to_json(crop_face),
        yaw=quality.yaw,
        grey=quality.grey,
        detector_score=face.score,
    )


@dataclass
class EnrollResult:
    """What enrolling one person did."""

    name: str
    accepted: list[Template]
    refusals: list[Refusal]
    added: int = 0
    stored: bool = False


def enroll(
    db: GateDB,
    pipeline: Pipeline,
    name: str,
    paths: Iterable[str | Path],
    *,
    skip_refused: bool = False,
    progress: Callable[[str], None] | None = None,
) -> EnrollResult:
    """Examine every photo, then store all templates in one transaction.

    With any refusal nothing is stored, unless ``skip_refused`` (then the
    accepted photos are, as long as there is at least one).
    """
    result = EnrollResult(name, [], [])
    for path in paths:
        verdict = examine(pipeline, path)
        if isinstance(verdict, Refusal):
            result.refusals.append(verdict)
        else:
            result.accepted.append(verdict)
        if progress:
            progress(str(path))
    if result.accepted and (skip_refused or not result.refusals):
        _, result.added = db.enroll(name, result.accepted)
        result.stored = True
    return result

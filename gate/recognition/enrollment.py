"""Enrollment: which photos may become face templates, and storing them all or nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gate.components import Face
from gate.errors import ComponentError, ImageError
from gate.recognition.images import encode_jpeg, face_region, face_to_json, grey_tail, read_image
from gate.recognition.pipeline import Pipeline
from gate.recognition.quality import FaceQuality, measure
from gate.storage.database import GateDB, Template, check_name

#: flat grey pixels at an image's end that mark it as truncated (decoders fill with grey)
GREY_TAIL_PX = 64


@dataclass(frozen=True)
class Refusal:
    """A photo that cannot be enrolled, and why."""

    source: str
    reason: str
    #: which rule refused it (see :func:`check_face`), ``look_alike`` or ``unreadable``
    kind: str = field(default="", compare=False)


def examine(pipeline: Pipeline, path: str | Path) -> Template | Refusal:
    """Check one photo: exactly one usable face, big and sharp enough; then encode it."""
    verdict = _examine(pipeline, path)
    return verdict if isinstance(verdict, Refusal) else verdict[0]


def _examine(pipeline: Pipeline, path: str | Path) -> tuple[Template, FaceQuality] | Refusal:
    """:func:`examine`, with the face's quality kept for matching it."""
    try:
        image = read_image(path)
    except ImageError as exc:
        return Refusal(str(path), str(exc).removeprefix(f"{path}: "), "unreadable")
    if grey_tail(image.pixels) >= GREY_TAIL_PX:
        return Refusal(
            str(path),
            "truncated or damaged: the image ends in flat grey; use an intact copy",
            "unreadable",
        )
    faces = pipeline.detector.detect(image.pixels)
    verdict = check_face(pipeline, image.pixels, faces, str(path))
    if isinstance(verdict, Refusal):
        return verdict
    return encode_face(pipeline, image.pixels, verdict, image.name, image.sha256)


def side_by_side(value: float, limit: float, signed: bool = False) -> tuple[str, str]:
    """``value`` and ``limit`` printed with one decimal, or more until the two differ.

    A refusal must not read "sharpness 25, need 25": the numbers that decided
    it are shown precisely enough to tell them apart (up to 4 decimals).
    """
    sign = "+" if signed else ""
    for places in range(1, 5):
        shown = f"{value:{sign}.{places}f}", f"{limit:.{places}f}"
        if f"{abs(value):.{places}f}" != f"{abs(limit):.{places}f}":
            break
    return shown


def check_face(
    pipeline: Pipeline, pixels: np.ndarray, faces: list[Face], source: str
) -> tuple[Face, FaceQuality] | Refusal:
    """The one face in ``faces`` fit to enroll and its quality, or why there is none.

    A refusal's ``kind`` says which rule failed: ``no_face``, ``faces`` (more
    than one), ``small``, ``blurred``, ``turned`` or ``unclear``.
    """
    rules = pipeline.config.enrollment
    if not faces:
        return Refusal(source, "no face found", "no_face")
    big = [f for f in faces if f.size >= rules.min_face_px]
    if len(big) > 1:
        return Refusal(
            source, f"{len(big)} faces found; an enrollment photo must show one", "faces"
        )
    face = max(faces, key=lambda f: f.size)
    if face.size < rules.min_face_px:
        size, need = side_by_side(face.size, rules.min_face_px)
        return Refusal(source, f"face too small ({size} px, need {need} px)", "small")
    quality = measure(pixels, face)
    if quality.sharpness < rules.min_sharpness:
        sharp, need = side_by_side(quality.sharpness, rules.min_sharpness)
        return Refusal(source, f"face too blurred (sharpness {sharp}, need {need})", "blurred")
    if abs(quality.yaw) > rules.max_yaw:
        yaw, most = side_by_side(quality.yaw, rules.max_yaw, signed=True)
        return Refusal(
            source,
            f"face turned away (yaw {yaw}, at most {most}): enroll a photo facing the camera",
            "turned",
        )
    if face.score < rules.min_detector_score:
        score, need = side_by_side(face.score, rules.min_detector_score)
        return Refusal(source, f"unclear face (detector score {score}, need {need})", "unclear")
    return face, quality


def encode_face(
    pipeline: Pipeline,
    pixels: np.ndarray,
    found: tuple[Face, FaceQuality],
    name: str,
    sha256: str | None = None,
) -> tuple[Template, FaceQuality]:
    """The template of a face that passed :func:`check_face`, and its quality.

    ``sha256`` identifies the source so it is not enrolled twice; without it
    (a camera frame) the stored face crop's is used.
    """
    face, quality = found
    encoder = pipeline.encoder
    vector = encoder.encode(pixels, [face])[0]
    crop, crop_face = face_region(pixels, face, pad=0.6, face_px=300)
    jpeg = encode_jpeg(crop, quality=95)
    template = Template(
        embedding=vector,
        encoder=encoder.name,
        encoder_version=encoder.version,
        space=encoder.space,
        source_sha256=sha256 or hashlib.sha256(jpeg).hexdigest(),
        source_name=name,
        face_size=face.size,
        quality=quality.sharpness,
        face_crop=jpeg,
        crop_face=face_to_json(crop_face),
        yaw=quality.yaw,
        grey=quality.grey,
        detector_score=face.score,
    )
    return template, quality


def look_alikes(
    db: GateDB, pipeline: Pipeline, name: str, faces: list[tuple[str, Template, FaceQuality]]
) -> list[Refusal]:
    """Refusals for the faces that match someone other than ``name``.

    The faces are matched against everyone else enrolled with the pipeline's
    matcher and the threshold calibrated for them (leaves the matcher fitted
    on everyone else).
    """
    if not faces:
        return []
    embeddings, person_ids = db.load_templates(pipeline.encoder.space)
    own = db.person(name)
    if own is not None:
        keep = person_ids != own["id"]
        embeddings, person_ids = embeddings[keep], person_ids[keep]
    if not len(embeddings):
        return []
    if embeddings.shape[1] != pipeline.encoder.dim:
        raise ComponentError(
            f"templates have {embeddings.shape[1]} dimensions, encoder "
            f"{pipeline.encoder.name!r} makes {pipeline.encoder.dim}"
        )
    pipeline.fit(embeddings, person_ids)
    vectors = np.stack([template.embedding for _, template, _ in faces])
    matches = pipeline.match(vectors, [quality for _, _, quality in faces], min_margin=0.0)
    names = db.names()
    refusals = []
    for (source, _, _), (match, limit) in zip(faces, matches, strict=True):
        if match.candidate_id is not None and match.distance <= limit:
            refusals.append(
                Refusal(
                    source,
                    f"looks like {names[match.candidate_id]} ({match.distance:.2f}): "
                    "--force to enroll anyway",
                    "look_alike",
                )
            )
    return refusals


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
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> EnrollResult:
    """Check the name, examine every photo, then store all templates in one transaction.

    A face that matches someone else enrolled is refused, unless ``force``.
    With any refusal nothing is stored, unless ``skip_refused`` (then the
    accepted photos are, as long as there is at least one).
    """
    name = check_name(name)
    result = EnrollResult(name, [], [])
    faces = []
    for path in paths:
        verdict = _examine(pipeline, path)
        if isinstance(verdict, Refusal):
            result.refusals.append(verdict)
        else:
            faces.append((str(path), *verdict))
        if progress:
            progress(str(path))
    alike = {} if force else {r.source: r for r in look_alikes(db, pipeline, name, faces)}
    for source, template, _ in faces:
        if source in alike:
            result.refusals.append(alike[source])
        else:
            result.accepted.append(template)
    if result.accepted and (skip_refused or not result.refusals):
        _, result.added = db.enroll(name, result.accepted)
        result.stored = True
    return result

"""Real photos: enrollment checks, identification of the shared sets, strangers and empty scenes."""

from __future__ import annotations

import numpy as np
import pytest

from gate.recognition.enrollment import Refusal, enroll, examine
from gate.recognition.images import list_images, read_image
from tests.conftest import data_path


@pytest.fixture(scope="module")
def enrolled(default_pipeline, tmp_path_factory):
    """Everyone in people/face_recognition enrolled into a fresh database."""
    from gate.storage.database import GateDB

    db = GateDB(tmp_path_factory.mktemp("rec") / "gate.db")
    for person in sorted(p for p in data_path("people", "face_recognition").iterdir()):
        result = enroll(db, default_pipeline, person.name, list_images(person))
        assert result.stored, result.refusals
    default_pipeline.load_templates(db)
    yield db, db.names()
    db.close()


def who(pipeline, names, path) -> list[str]:
    recs = pipeline.recognise(read_image(path).pixels)
    return [names[r.match.person_id] if r.match.status == "match" else r.match.status for r in recs]


@pytest.mark.parametrize(
    ("probe", "person"),
    [
        ("obama1.jpg", "obama"),
        ("alex_lacamoire1.jpg", "alex_lacamoire"),
        ("johnsnow_test1.jpg", "kit_harington"),
    ],
)
def test_probes_name_the_right_person(default_pipeline, enrolled, probe, person):
    _, names = enrolled
    assert who(default_pipeline, names, data_path("probes", "face_recognition", probe)) == [person]


def test_unknown_faces_never_match_anyone(default_pipeline, enrolled):
    _, names = enrolled
    for path in list_images(data_path("negatives", "unknown_face")):
        answers = who(default_pipeline, names, path)
        assert answers, f"{path.name}: the face should be found"
        assert all(a in ("unknown", "ambiguous") for a in answers), (path.name, answers)


def test_no_face_images_give_no_face(default_pipeline):
    paths = list_images(data_path("negatives", "no_face"))
    assert len(paths) >= 10
    for path in paths:
        assert default_pipeline.detector.detect(read_image(path).pixels) == [], path.name


def test_enrollment_refuses_no_face_several_faces_small_and_blurred(default_pipeline, tmp_path):
    import cv2

    no_face = examine(default_pipeline, data_path("negatives", "no_face", "coffee.png"))
    assert no_face == Refusal(no_face.source, "no face found")
    several = examine(default_pipeline, data_path("multi", "face_recognition_two_people.jpg"))
    assert isinstance(several, Refusal) and "faces found" in several.reason

    photo = read_image(data_path("people", "face_recognition", "obama", "obama.jpg")).pixels
    small = cv2.resize(photo, None, fx=0.18, fy=0.18, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "small.png"), small)
    refusal = examine(default_pipeline, tmp_path / "small.png")
    assert isinstance(refusal, Refusal) and refusal.reason.startswith("face too small")

    cv2.imwrite(str(tmp_path / "blurred.png"), cv2.GaussianBlur(photo, (0, 0), 9))
    refusal = examine(default_pipeline, tmp_path / "blurred.png")
    assert isinstance(refusal, Refusal) and refusal.reason.startswith("face too blurred")


def test_enrollment_keeps_the_face_crop_to_encode_again(default_pipeline):
    from gate.recognition.images import decode_image, face_from_json

    photo = data_path("people", "face_recognition", "biden", "biden.jpg")
    template = examine(default_pipeline, photo)
    crop = decode_image(template.face_crop, "crop")
    face = face_from_json(template.crop_face)
    again = default_pipeline.encoder.encode(crop, [face])[0]
    # the stored crop (JPEG, face at most 300 px) encodes to nearly the same point:
    # far inside the 0.6 threshold, as close as the encoder's own noise at other scales
    assert np.linalg.norm(again - template.embedding) < 0.15
    assert face.size <= 300.5


def test_grey_and_four_channel_images_are_handled(default_pipeline, tmp_path):
    import cv2

    rgba = read_image(data_path("multi", "face_recognition_32bit.png")).pixels
    assert rgba.shape[2] == 3
    assert default_pipeline.recognise(rgba)
    photo = read_image(data_path("people", "face_recognition", "obama", "obama.jpg")).pixels
    cv2.imwrite(str(tmp_path / "grey.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "deep.png"), (photo.astype(np.uint16) * 257))
    for name in ("grey.png", "deep.png"):
        pixels = read_image(tmp_path / name).pixels
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
        assert len(default_pipeline.recognise(pixels)) == 1

"""The torch encoder as gate uses it: agreement with dlib's pipeline, batching, awkward input."""

from __future__ import annotations

import numpy as np
import pytest

from gate.components import Face
from gate.demo import sample_path
from gate.recognition.images import read_image


@pytest.fixture(scope="module")
def encoder(default_pipeline):
    assert default_pipeline.encoder.name == "dlib-torch"
    return default_pipeline.encoder


@pytest.fixture(scope="module")
def obama(default_pipeline):
    pixels = read_image(sample_path("people", "obama", "obama.jpg")).pixels
    return pixels, default_pipeline.detector.detect(pixels)[0]


def test_same_space_as_dlib_and_close_to_it_on_the_same_face(pm, obama, encoder):
    dlib_encoder = pm.registry.get("encoder", "dlib").cls()
    pixels, face = obama
    ours, theirs = encoder.encode(pixels, [face])[0], dlib_encoder.encode(pixels, [face])[0]
    assert encoder.space == dlib_encoder.space and encoder.dim == 128
    # different alignment and mirror views: the same point within the encoder's own noise
    assert np.linalg.norm(ours - theirs) < 0.15


def test_one_batch_for_all_faces_equals_one_by_one(obama, encoder, default_pipeline):
    biden = read_image(sample_path("people", "biden", "biden.jpg")).pixels
    biden_face = default_pipeline.detector.detect(biden)[0]
    pixels, face = obama
    together = encoder.encode_many([(pixels, [face, face]), (biden, [biden_face])])
    np.testing.assert_allclose(together[0][0], encoder.encode(pixels, [face])[0], atol=1e-4)
    np.testing.assert_allclose(together[1][0], encoder.encode(biden, [biden_face])[0], atol=1e-4)
    assert encoder.encode(pixels, []).shape == (0, 128)


def test_awkward_faces_and_images_give_finite_embeddings(obama, encoder):
    pixels, face = obama
    h, w = pixels.shape[:2]
    outside = Face(face.box, face.score, face.landmarks + np.float32([w, h]), face.scheme)
    collapsed = Face(face.box, face.score, np.zeros((5, 2), np.float32), face.scheme)
    no_marks = Face(face.box, face.score, None)
    off_image = Face((w + 50.0, h + 50.0, 80.0, 80.0), 0.9, None)
    grey = pixels.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([pixels, np.full((h, w), 255, np.uint8)])
    one = np.zeros((1, 1, 3), np.uint8)
    cases = [
        (pixels, outside),
        (pixels, collapsed),
        (pixels, no_marks),
        (pixels, off_image),
        (grey, face),
        (rgba, face),
        (one, Face((0.0, 0.0, 1.0, 1.0), 0.5, None)),
    ]
    for image, awkward in cases:
        vector = encoder.encode(image, [awkward])
        assert vector.shape == (1, 128) and np.isfinite(vector).all()
    grey_vector = encoder.encode(grey, [face])[0]
    assert np.linalg.norm(grey_vector - encoder.encode(pixels, [face])[0]) < 0.3

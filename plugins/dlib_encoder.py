"""Encoder ``dlib``: dlib's 128-d ResNet on chips aligned by its 5-point predictor."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from pydantic import Field

from gate import hookimpl
from gate.components import Encoder, Face, StrictOptions
from gate_plugins import _dlib


@cache
def _face_model():
    import dlib

    return dlib.face_recognition_model_v1(
        str(_dlib.model_path("dlib_face_recognition_resnet_model_v1.dat"))
    )


class DlibEncoderOptions(StrictOptions):
    jitter: int = Field(0, ge=0, le=100, description="Extra jittered copies averaged per face.")


class DlibEncoder(Encoder):
    """dlib.face_recognition_model_v1.compute_face_descriptor, batched per image."""

    name = "dlib"
    version = "resnet_v1"
    description = "dlib ResNet (CC0 weights), 150x150 chip, padding 0.25"
    space = "dlib-resnet-v1"
    dim = 128
    threshold = 0.6
    Options = DlibEncoderOptions

    def encode(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        import dlib

        rgb = _dlib.to_rgb(image)
        predictor = _dlib.shape_predictor()
        shapes = dlib.full_object_detections()
        for face in faces:
            shapes.append(predictor(rgb, _dlib.rectangle(face.box)))
        vectors = _face_model().compute_face_descriptor(rgb, shapes, self.options.jitter, 0.25)
        return np.asarray([np.asarray(v) for v in vectors], np.float32).reshape(-1, self.dim)

    def impostor_model(self, rule: str = "nearest"):
        return _dlib.impostor_model(rule)


@hookimpl
def register_encoders(register):
    register(DlibEncoder)

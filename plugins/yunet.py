"""Detector ``yunet``: OpenCV's YuNet (box, score and 5 landmarks), model bundled and checked."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
from pydantic import Field

from gate import hookimpl
from gate.components import Detector, Face, StrictOptions

MODEL_FILE = "face_detection_yunet_2023mar.onnx"
MODEL_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


class ModelError(RuntimeError):
    """A bundled model file that is missing or not the one we shipped."""


def load_model_bytes() -> bytes:
    """The bundled YuNet model, refused unless its sha256 matches."""
    data = (resources.files("gate_plugins") / "models" / MODEL_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise ModelError(f"{MODEL_FILE}: sha256 {digest} is not the expected {MODEL_SHA256}")
    return data


class YuNetOptions(StrictOptions):
    score_threshold: float = Field(0.8, gt=0, lt=1, description="Least face confidence.")
    nms_threshold: float = Field(0.3, gt=0, lt=1, description="Overlap that merges boxes.")
    max_side: int = Field(1280, ge=160, le=8192, description="Larger images are shrunk first.")
    min_face_px: int = Field(16, ge=1, description="Smaller faces are ignored.")


class YuNetDetector(Detector):
    """cv2.FaceDetectorYN; landmarks in the ``yunet5`` scheme."""

    name = "yunet"
    version = "2023mar"
    description = "YuNet (OpenCV Model Zoo, MIT): box, score, 5 landmarks"
    Options = YuNetOptions

    def __init__(self, options: YuNetOptions | None = None):
        super().__init__(options)
        from gate.recognition.images import cv2

        cv = cv2()
        model = np.frombuffer(load_model_bytes(), np.uint8)
        o = self.options
        self._net = cv.FaceDetectorYN.create(
            "onnx", model, np.zeros(0, np.uint8), (320, 320), o.score_threshold, o.nms_threshold
        )
        self._cv = cv

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        if h < 2 or w < 2:
            return []
        scale = min(1.0, self.options.max_side / max(h, w))
        small = image
        if scale < 1.0:
            size = (max(2, round(w * scale)), max(2, round(h * scale)))
            small = self._cv.resize(image, size, interpolation=self._cv.INTER_AREA)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._net.detect(np.ascontiguousarray(small))
        if rows is None:
            return []
        faces = []
        for row in rows / np.float32(scale):
            box = tuple(float(v) for v in row[:4])
            if min(box[2], box[3]) < self.options.min_face_px:
                continue
            marks = row[4:14].reshape(5, 2).astype(np.float32)
            faces.append(Face(box, float(row[14] * scale), marks, "yunet5"))
        return sorted(faces, key=lambda f: f.score, reverse=True)


@hookimpl
def register_detectors(register):
    register(YuNetDetector)

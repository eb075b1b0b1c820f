"""Detector ``dlib-hog``: dlib's HOG face detector, landmarks from its 5-point predictor."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from gate import hookimpl
from gate.components import Detector, Face, StrictOptions
from gate_plugins import _dlib


class DlibHogOptions(StrictOptions):
    upsample: int = Field(1, ge=0, le=3, description="Times the image is doubled first.")
    adjust_threshold: float = Field(0.0, ge=-2, le=2, description="Added to the HOG cut-off.")


class DlibHogDetector(Detector):
    """dlib.get_frontal_face_detector; score is the logistic of dlib's SVM margin."""

    name = "dlib-hog"
    description = "dlib HOG + linear SVM, frontal faces; dlib 5-point landmarks"
    Options = DlibHogOptions

    def __init__(self, options=None):
        super().__init__(options)
        import dlib

        self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[Face]:
        if min(image.shape[:2]) < 2:
            return []
        rgb = _dlib.to_rgb(image)
        rects, scores, _ = self._detector.run(
            rgb, self.options.upsample, self.options.adjust_threshold
        )
        predictor = _dlib.shape_predictor()
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            marks = _dlib.shape_points(predictor(rgb, rect))
            box = (float(rect.left()), float(rect.top()), float(rect.width()), float(rect.height()))
            faces.append(Face(box, 1.0 / (1.0 + math.exp(-score)), marks, "dlib5"))
        return sorted(faces, key=lambda f: f.score, reverse=True)


@hookimpl
def register_detectors(register):
    register(DlibHogDetector)

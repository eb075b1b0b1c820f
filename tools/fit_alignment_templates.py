"""Fit the 5-point alignment templates of gate/recognition/align.py from dlib's own face chips.

dlib aligns a face by fitting its 5-point landmarks to a template and cutting a
150x150 chip with padding 0.25. This script finds where each landmark scheme
lands inside those chips, on photos that are not LFW (the benchmark): for
every face that dlib's HOG detector and YuNet both find, it maps YuNet's
landmarks and dlib's 5 points into dlib's chip through dlib's own chip
transform, and averages. It then checks that fitting dlib's points to the
dlib template reproduces dlib's chips. Run from the repository root:

    python tools/fit_alignment_templates.py
"""

from __future__ import annotations

import glob

import numpy as np

from gate.recognition.align import similarity_fit
from gate.recognition.images import read_image
from gate_plugins import _dlib
from gate_plugins.yunet import YuNetDetector

FOLDERS = ["people/deepface", "people/face_recognition", "people/facenet_pytorch", "multi"]


def dlib_image_to_chip(details) -> np.ndarray:
    """The 2x3 image->chip map of a dlib chip_details."""
    r = details.rect
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    scale = (r.right() - r.left()) / (details.cols - 1)
    a = details.angle
    linear = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    offset = centre - linear @ np.full(2, (details.cols - 1) / 2)
    return np.linalg.inv(np.vstack([np.hstack([linear, offset[:, None]]), [0, 0, 1]]))[:2]


def _distance(face, point) -> float:
    x, y, w, h = face.box
    return float(np.hypot(x + w / 2 - point[0], y + h / 2 - point[1]))


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def main() -> None:
    import dlib

    hog = dlib.get_frontal_face_detector()
    yunet = YuNetDetector()
    records = []
    paths = sorted(
        p
        for folder in FOLDERS
        for p in glob.glob(f"../shared/data/{folder}/**/*", recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    for path in paths:
        image = read_image(path).pixels
        rgb = _dlib.to_rgb(image)
        faces = yunet.detect(image)
        for rect in hog(rgb, 1):
            shape = _dlib.shape_predictor()(rgb, rect)
            to_chip = dlib_image_to_chip(dlib.get_face_chip_details(shape, 150, 0.25))
            centre = np.array([rect.center().x, rect.center().y])
            near = [f for f in faces if _distance(f, centre) < 0.3 * rect.width()]
            if len(near) == 1:
                records.append((to_chip, near[0].landmarks, _dlib.shape_points(shape)))
    yunet5 = np.mean([apply(m, y) for m, y, _ in records], axis=0)
    dlib5 = np.mean([apply(m, d) for m, _, d in records], axis=0)
    # how far our fit of dlib's points lands from dlib's own chip, at the chip corners
    corners = np.array([[0, 0], [149, 0], [0, 149], [149, 149]], np.float64)
    miss_dlib, miss_yunet = [], []
    for to_chip, yun, pts in records:
        truth = np.linalg.inv(np.vstack([to_chip, [0, 0, 1]]))[:2]
        for template, src, out in ((dlib5, pts, miss_dlib), (yunet5, yun, miss_yunet)):
            ours = np.linalg.inv(np.vstack([similarity_fit(src, template), [0, 0, 1]]))[:2]
            scale = np.sqrt(abs(np.linalg.det(truth[:, :2])))
            out.append(np.abs(apply(ours, corners) - apply(truth, corners)).max() / scale)
    print(f"faces used: {len(records)}")
    print("yunet5 =", np.round(yunet5, 3).tolist())
    print("dlib5 =", np.round(dlib5, 3).tolist())
    for name, miss in (("dlib5", miss_dlib), ("yunet5", miss_yunet)):
        print(f"{name}: corners off by median {np.median(miss):.3f} chip px, max {max(miss):.3f}")


if __name__ == "__main__":
    main()

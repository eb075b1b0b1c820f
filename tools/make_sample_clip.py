"""Compose gate's bundled demo clip (gate/samples/door.mp4) from redistributable stills.

Run from the repository root, with ../shared/data present:
    python tools/make_sample_clip.py
Each still is framed around its face (found with YuNet) and slowly zoomed, so
consecutive frames differ as a camera's would. The clip holds only files that
../shared/data marks as redistributable; see gate/samples/SOURCES.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from gate.plugins import make_plugin_manager
from gate.recognition.images import cv2, read_image

DATA = Path("../shared/data")
FPS, SIZE = 10, (640, 480)
SCENES = [  # (file, seconds)
    ("redistributable/coffee.png", 1.0),
    ("redistributable/astronaut.png", 2.0),
    ("people/face_recognition/obama/obama3.jpg", 2.5),
    ("redistributable/rocket.jpg", 1.0),
    ("redistributable/camera.png", 2.0),
    ("people/face_recognition/biden/biden2.jpg", 2.5),
    ("redistributable/coffee.png", 1.0),
]


def frames_for(image: np.ndarray, seconds: float, detector) -> list[np.ndarray]:
    cv = cv2()
    h, w = image.shape[:2]
    faces = detector.detect(image)
    if faces:
        x, y, fw, fh = faces[0].box
        limit = min(h, w * SIZE[1] / SIZE[0])  # keep the window inside the picture
        start = min(4.0 * fh, limit)
        cx, cy, end = x + fw / 2, y + fh / 2, min(3.0 * fh, 0.8 * start)
    else:
        cx, cy, start, end = w / 2, h / 2, float(h), 0.85 * h
    out = []
    count = round(seconds * FPS)
    for i in range(count):
        span = start + (end - start) * i / max(1, count - 1)
        win_h, win_w = span, span * SIZE[0] / SIZE[1]
        src = np.float32([[cx - win_w / 2, cy - win_h / 2], [cx + win_w / 2, cy - win_h / 2],
                          [cx - win_w / 2, cy + win_h / 2]])  # fmt: skip
        dst = np.float32([[0, 0], [SIZE[0], 0], [0, SIZE[1]]])
        matrix = cv.getAffineTransform(src, dst)
        out.append(cv.warpAffine(image, matrix, SIZE, flags=cv.INTER_AREA,
                                 borderMode=cv.BORDER_CONSTANT))  # fmt: skip
    return out


def main(target: str = "gate/samples/door.mp4") -> None:
    cv = cv2()
    detector = make_plugin_manager(entry_points=False).registry.get("detector", "yunet").cls()
    writer = cv.VideoWriter(target, cv.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        sys.exit(f"cannot write {target}")
    for name, seconds in SCENES:
        for frame in frames_for(read_image(DATA / name).pixels, seconds, detector):
            writer.write(frame)
    writer.release()
    print(f"wrote {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])

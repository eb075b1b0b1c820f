"""Embed the shared face sets once, under the image conditions of real door cameras.

The open-set benchmark and the impostor model (``tools/fit_impostor_model.py``)
read the cache this writes: for every image of LFW View 1 (and the labelled
``people/`` sets) the largest face's embedding, its quality and the person,
once per condition:

* ``colour``: the photo as it is;
* ``grey``: the same photo with its colour removed (a night-time infrared camera);
* ``colour-64``, ``grey-64``, ``grey-96``: the photo scaled so that the face is
  about 64 or 96 px, grey or not;
* ``colour-far``, ``grey-far``: the face scaled to about 52 px, blurred a little
  and JPEG-compressed at quality 40, as a far corridor camera streams it.

    python bench/embed_sets.py [--data ../shared/data] [--cache .cache/embeddings]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.images import list_images, read_image
from gate.recognition.pipeline import Pipeline
from gate.recognition.quality import measure

CONDITIONS = {"colour": (False, None), "grey": (True, None), "colour-64": (False, 64),
              "grey-64": (True, 64), "grey-96": (True, 96), "colour-far": (False, 52),
              "grey-far": (True, 52)}  # fmt: skip
#: conditions whose small image is also blurred and JPEG-compressed (a far corridor camera)
DEGRADED = {"colour-far", "grey-far"}


def apply_condition(
    image: np.ndarray, grey: bool, face_px: float | None, face_size: float, degrade: bool = False
):
    """The image as a camera in that condition would see it."""
    import cv2

    if face_px is not None and face_size > face_px:
        scale = face_px / face_size
        size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if degrade:
        image = cv2.GaussianBlur(image, (0, 0), 0.8)
        _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if grey:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return image


def embed(pipeline: Pipeline, paths: list[Path], labels: list[str], condition: str, out: Path):
    grey, face_px = CONDITIONS[condition]
    rows = {k: [] for k in ("label", "path", "embedding", "size", "sharpness", "yaw", "roll",
                            "score", "grey")}  # fmt: skip
    batch = []
    started = time.perf_counter()

    def flush():
        vectors = pipeline.encoder.encode_many([(img, [face]) for img, face, _, _ in batch])
        for (img, face, label, path), vec in zip(batch, vectors, strict=True):
            q = measure(img, face)
            rows["label"].append(label)
            rows["path"].append(str(path))
            rows["embedding"].append(vec[0])
            for key in ("size", "sharpness", "yaw", "roll", "score", "grey"):
                rows[key].append(getattr(q, key))
        batch.clear()

    for n, (path, label) in enumerate(zip(paths, labels, strict=True)):
        pixels = read_image(path).pixels
        if face_px is not None:
            faces = pipeline.detector.detect(pixels)
            if not faces:
                continue
            biggest = max(f.size for f in faces)
            pixels = apply_condition(pixels, grey, face_px, biggest, condition in DEGRADED)
        else:
            pixels = apply_condition(pixels, grey, None, 0)
        faces = pipeline.detector.detect(pixels)
        if not faces:
            continue
        h, w = pixels.shape[:2]
        # the face nearest the centre among the large ones (LFW centres its subject)
        big = max(f.size for f in faces)
        face = min((f for f in faces if f.size >= 0.6 * big),
                   key=lambda f: abs(f.box[0] + f.box[2] / 2 - w / 2)
                   + abs(f.box[1] + f.box[3] / 2 - h / 2))  # fmt: skip
        batch.append((pixels, face, label, path))
        if len(batch) >= 32:
            flush()
        if n % 500 == 0:
            print(
                f"  {condition}: {n}/{len(paths)} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    if batch:
        flush()
    np.savez_compressed(
        out,
        label=np.array(rows["label"]),
        path=np.array(rows["path"]),
        embedding=np.array(rows["embedding"], np.float32).reshape(-1, pipeline.encoder.dim),
        **{
            k: np.array(rows[k], np.float32)
            for k in ("size", "sharpness", "yaw", "roll", "score", "grey")
        },
        seen=np.array(len(paths)),
    )
    print(f"{out}: {len(rows['label'])} of {len(paths)} faces")


def image_sets(data: Path) -> dict[str, tuple[list[Path], list[str]]]:
    sets = {}
    lfw = data / "lfw-view1" / "images"
    if lfw.is_dir():
        paths = sorted(lfw.glob("*/*.jpg"))
        sets["lfw"] = (paths, [p.parent.name for p in paths])
    for name in ("face_recognition", "deepface", "bbt", "dlib_johns"):
        root = data / "people" / name
        if root.is_dir():
            paths = [p for person in sorted(root.iterdir()) if person.is_dir()
                     for p in list_images(person)]  # fmt: skip
            sets[name] = (paths, [f"{name}/{p.parent.name}" for p in paths])
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    parser.add_argument("--sets", default="lfw,face_recognition,deepface,bbt,dlib_johns")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    args = parser.parse_args()
    pipeline = Pipeline(parse_config({}), make_plugin_manager(entry_points=False).registry)
    args.cache.mkdir(parents=True, exist_ok=True)
    sets = image_sets(args.data)
    for name in args.sets.split(","):
        if name not in sets:
            print(f"{name}: not in {args.data}, skipped")
            continue
        paths, labels = sets[name]
        for condition in args.conditions.split(","):
            out = args.cache / f"{name}-{condition}.npz"
            if out.exists():
                print(f"{out}: cached")
                continue
            embed(pipeline, paths, labels, condition, out)


if __name__ == "__main__":
    main()

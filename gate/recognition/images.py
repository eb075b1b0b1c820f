"""Reading images safely, and the small image helpers the pipeline shares."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from gate.components import Face
from gate.errors import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}

#: The most pixels gate decodes: a larger image is refused from its header, before decoding.
MAX_PIXELS = 50_000_000
_SCALE_DOWN = f"at most {MAX_PIXELS // 1_000_000} megapixels are decoded: scale it down"


@cache
def cv2():
    """OpenCV, imported on first use with its warnings kept quiet."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg quiet: we report errors
    # OpenCV's own limit, read at import: a second wall for formats Pillow cannot size
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
    import cv2 as _cv2

    _cv2.utils.logging.setLogLevel(_cv2.utils.logging.LOG_LEVEL_ERROR)
    return _cv2


@dataclass(frozen=True)
class LoadedImage:
    """Pixels (BGR uint8, H x W x 3) with the file's name and content hash."""

    pixels: np.ndarray
    name: str
    sha256: str


def _looks_truncated(data: bytes) -> str | None:
    """Catch truncation that some decoders forgive: a JPEG without its end marker."""
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-64:]:
        return "truncated or corrupt JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        return "truncated or corrupt PNG (no IEND chunk)"
    return None


def _too_large(data: bytes) -> str | None:
    """Why an image has too many pixels to decode, read from its header alone; None if not."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own hard limit, far above gate's
        over = 2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000
        return f"image too large (over {over} megapixels; {_SCALE_DOWN})"
    except Exception:  # Pillow cannot size it: OpenCV's own limit still applies
        return None
    if width * height > MAX_PIXELS:
        return f"image too large ({width}x{height} pixels; {_SCALE_DOWN})"
    return None


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to BGR uint8; EXIF orientation applied, alpha dropped.

    Images of more than :data:`MAX_PIXELS` are refused before decoding.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    problem = _looks_truncated(data) or _too_large(data)
    if problem:
        raise ImageError(f"{name}: {problem}")
    cv = cv2()
    try:
        pixels = cv.imdecode(np.frombuffer(data, np.uint8), cv.IMREAD_COLOR)
    except cv.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise ImageError(f"{name}: image too large ({_SCALE_DOWN})") from None
        pixels = None
    if pixels is None or pixels.size == 0:
        raise ImageError(f"{name}: not an image, or corrupt")
    return as_bgr(pixels)


def read_image(path: str | Path) -> LoadedImage:
    """Read an image file; any problem is an :class:`ImageError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    pixels = decode_image(data, str(path))
    return LoadedImage(pixels, path.name, hashlib.sha256(data).hexdigest())


def grey_tail(pixels: np.ndarray) -> int:
    """How many pixels at the end, in reading order, are flat mid-grey.

    Decoders fill what a truncated JPEG lacks with that grey (128), also when
    a forged end marker hides the truncation.
    """
    flat = (np.abs(pixels.astype(np.int16) - 128) <= 1).all(axis=-1).ravel()
    other = np.flatnonzero(~flat)
    return int(flat.size if other.size == 0 else flat.size - 1 - other[-1])


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Any grey, BGR or BGRA image of 8 or 16 bits as contiguous BGR uint8."""
    cv = cv2()
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv.cvtColor(image, cv.COLOR_GRAY2BGR)
    elif image.shape[2] == 1:
        image = cv.cvtColor(image[:, :, 0], cv.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv.cvtColor(image, cv.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def face_region(image: np.ndarray, face: Face, pad: float, face_px: float):
    """The face's box grown by ``pad`` box sizes each side, clipped to the image, and
    shrunk (never enlarged) so the face is at most ``face_px`` pixels.

    Returns the crop and the face in the crop's coordinates, so an encoder can
    align the face again from the crop alone.
    """
    h, w = image.shape[:2]
    x, y, bw, bh = face.box
    x0 = int(max(0, np.floor(x - pad * bw)))
    y0 = int(max(0, np.floor(y - pad * bh)))
    x1 = int(min(w, np.ceil(x + bw + pad * bw)))
    y1 = int(min(h, np.ceil(y + bh + pad * bh)))
    if x1 <= x0 or y1 <= y0:
        x0, y0, x1, y1 = 0, 0, w, h
    crop = image[y0:y1, x0:x1]
    scale = min(1.0, face_px / max(face.size, 1.0))
    if scale < 1.0:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2().resize(crop, size, interpolation=cv2().INTER_AREA)
        scale = size[0] / (x1 - x0)
    return np.ascontiguousarray(crop), face.shifted(x0, y0, scale)


def sharpness(image: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the face box scaled to 112 px: low means blurred."""
    cv = cv2()
    h, w = image.shape[:2]
    x, y, bw, bh = face.box
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(w, int(x + bw)), min(h, int(y + bh))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    grey = cv.cvtColor(image[y0:y1, x0:x1], cv.COLOR_BGR2GRAY)
    grey = cv.resize(grey, (112, 112), interpolation=cv.INTER_AREA)
    return float(cv.Laplacian(grey, cv.CV_64F).var())


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR image."""
    cv = cv2()
    ok, buf = cv.imencode(".jpg", image, [cv.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("could not encode JPEG")
    return buf.tobytes()


def face_to_json(face: Face) -> str:
    """A face's box, score and landmarks as JSON (stored beside its crop)."""
    return json.dumps(
        {
            "box": [round(float(v), 3) for v in face.box],
            "score": round(float(face.score), 4),
            "landmarks": None if face.landmarks is None else face.landmarks.round(3).tolist(),
            "scheme": face.scheme,
        }
    )


def face_from_json(text: str) -> Face:
    """Inverse of :func:`face_to_json`."""
    data = json.loads(text)
    marks = data.get("landmarks")
    return Face(
        tuple(data["box"]),
        float(data["score"]),
        None if marks is None else np.asarray(marks, np.float32),
        data.get("scheme", "yunet5"),
    )

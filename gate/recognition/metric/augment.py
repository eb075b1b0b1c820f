"""Training augmentation that imitates door cameras, on aligned BGR face chips.

All functions take and return ``H x W x 3`` ``uint8`` BGR arrays (e.g. 150 x 150 aligned face
chips) of unchanged shape, never modify their input, and work on images as small as 1 x 1.
:class:`DoorCameraAugment` chains them with a probability per op and a
``numpy.random.Generator`` for reproducibility.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

__all__ = [
    "DEFAULT_PROBABILITIES",
    "OPS",
    "DoorCameraAugment",
    "adjust_brightness_contrast",
    "gaussian_blur",
    "hflip",
    "jpeg_reencode",
    "low_light",
    "motion_blur",
    "rotate",
    "shift_crop",
]

#: Op names, in the order they are applied (geometry, photometry, optics, then encoding).
OPS: tuple[str, ...] = (
    "flip",
    "rotate",
    "crop",
    "brightness_contrast",
    "low_light",
    "blur",
    "jpeg",
)

#: Default probability of each op.
DEFAULT_PROBABILITIES: dict[str, float] = {
    "flip": 0.5,
    "rotate": 0.3,
    "crop": 0.3,
    "brightness_contrast": 0.5,
    "low_light": 0.2,
    "blur": 0.2,
    "jpeg": 0.3,
}


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("expected a numpy uint8 array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right (a new contiguous array)."""
    return np.ascontiguousarray(image[:, ::-1])


def adjust_brightness_contrast(image: np.ndarray, contrast: float, brightness: float) -> np.ndarray:
    """``out = clip(contrast * (x - mean) + mean + brightness)``, brightness in grey levels.

    Contrast stretches around the image mean, so it does not shift the overall exposure.
    """
    x = image.astype(np.float32)
    mean = float(x.mean())
    out = contrast * (x - mean) + mean + brightness
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def low_light(
    image: np.ndarray, gamma: float, noise_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Dim scene: gamma darkening ``255 * (x / 255) ** gamma`` (``gamma > 1`` darkens) plus
    zero-mean Gaussian sensor noise of ``noise_sigma`` grey levels (independent per channel)."""
    x = 255.0 * np.power(image.astype(np.float32) / 255.0, gamma)
    if noise_sigma > 0:
        x = x + rng.normal(0.0, noise_sigma, size=image.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Out-of-focus blur: Gaussian of standard deviation ``sigma`` pixels (kernel ~ 6 sigma)."""
    if sigma <= 0:
        return image.copy()
    size = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(image, (size, size), sigma, borderType=cv2.BORDER_REPLICATE)


def motion_blur(image: np.ndarray, length: int, angle_deg: float) -> np.ndarray:
    """Linear motion blur: average along a ``length``-pixel line at ``angle_deg`` degrees."""
    if length <= 1:
        return image.copy()
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    centre = ((length - 1) / 2.0, (length - 1) / 2.0)
    rotation = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    total = float(kernel.sum())
    if total <= 0:  # cannot happen for length >= 2, but never divide by zero
        return image.copy()
    return cv2.filter2D(image, -1, kernel / total, borderType=cv2.BORDER_REPLICATE)


def rotate(image: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate about the centre by ``angle_deg`` degrees (counter-clockwise), border replicated."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, 1.0)
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def shift_crop(image: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    """Crop a window ``scale`` times the image size (``0 < scale <= 1``), its centre moved by
    ``(dx, dy)`` fractions of the width/height (clamped inside the image), resized back."""
    h, w = image.shape[:2]
    cw = min(w, max(1, round(w * scale)))
    ch = min(h, max(1, round(h * scale)))
    x0 = round((w - cw) / 2.0 + dx * w)
    y0 = round((h - ch) / 2.0 + dy * h)
    x0 = min(max(x0, 0), w - cw)
    y0 = min(max(y0, 0), h - ch)
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    if (ch, cw) == (h, w):
        return crop.copy()
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg_reencode(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG at ``quality`` (1-100) with ``cv2.imencode`` / ``cv2.imdecode``."""
    quality = int(min(max(quality, 1), 100))
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if decoded is None or decoded.shape != image.shape:
        raise RuntimeError("JPEG decoding failed")
    return decoded


class DoorCameraAugment:
    """Random door-camera degradations for ``H x W x 3`` uint8 BGR face chips.

    Ops, in application order (each applied independently with its probability):

    * ``flip``: horizontal mirror;
    * ``rotate``: uniform angle in ``[-max_rotation_deg, max_rotation_deg]``;
    * ``crop``: window of ``scale`` in ``[min_crop_scale, 1]``, centre shifted by up to
      ``max_shift`` of the size, resized back;
    * ``brightness_contrast``: contrast factor in ``1 +- contrast``, brightness offset in
      ``+- brightness`` grey levels;
    * ``low_light``: gamma in ``gamma_range`` plus Gaussian noise sigma in ``noise_range``;
    * ``blur``: Gaussian (sigma in ``blur_sigma_range``) or, with probability
      ``motion_blur_share``, a short motion blur (length in ``motion_length_range``);
    * ``jpeg``: re-encode at a quality in ``jpeg_quality_range`` (inclusive).

    ``p`` is ``None`` (:data:`DEFAULT_PROBABILITIES`), one float for every op, or a mapping that
    overrides some ops (unknown names raise ValueError). ``seed`` is an int, a
    ``numpy.random.Generator`` (used as is) or ``None`` (fresh entropy). The same seed gives the
    same sequence of outputs; in ``DataLoader`` workers call :meth:`reseed` (e.g. with the
    worker's torch seed) or every worker repeats the same stream. ``__call__`` accepts an
    explicit ``rng`` too.
    """

    def __init__(
        self,
        p: float | Mapping[str, float] | None = None,
        seed: int | np.random.Generator | None = None,
        *,
        max_rotation_deg: float = 5.0,
        min_crop_scale: float = 0.9,
        max_shift: float = 0.05,
        brightness: float = 32.0,
        contrast: float = 0.3,
        gamma_range: tuple[float, float] = (1.5, 3.0),
        noise_range: tuple[float, float] = (2.0, 10.0),
        blur_sigma_range: tuple[float, float] = (0.5, 1.5),
        motion_length_range: tuple[int, int] = (3, 7),
        motion_blur_share: float = 0.3,
        jpeg_quality_range: tuple[int, int] = (30, 95),
    ) -> None:
        self.probabilities = dict(DEFAULT_PROBABILITIES)
        if isinstance(p, Mapping):
            unknown = sorted(set(p) - set(OPS))
            if unknown:
                raise ValueError(f"unknown augment ops {unknown}; known: {', '.join(OPS)}")
            self.probabilities.update({name: float(value) for name, value in p.items()})
        elif p is not None:
            self.probabilities = {name: float(p) for name in OPS}
        for name, value in self.probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"probability of {name!r} must be in [0, 1], got {value}")
        if not 0.0 < min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale}")
        self.max_rotation_deg = max_rotation_deg
        self.min_crop_scale = min_crop_scale
        self.max_shift = max_shift
        self.brightness = brightness
        self.contrast = contrast
        self.gamma_range = gamma_range
        self.noise_range = noise_range
        self.blur_sigma_range = blur_sigma_range
        self.motion_length_range = motion_length_range
        self.motion_blur_share = motion_blur_share
        self.jpeg_quality_range = jpeg_quality_range
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | np.random.Generator | None) -> None:
        """Replace the generator (e.g. per ``DataLoader`` worker)."""
        self.rng = np.random.default_rng(seed)

    def _apply(self, name: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if name == "flip":
            return hflip(image)
        if name == "rotate":
            angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
            return rotate(image, angle)
        if name == "crop":
            scale = rng.uniform(self.min_crop_scale, 1.0)
            dx, dy = rng.uniform(-self.max_shift, self.max_shift, size=2)
            return shift_crop(image, scale, dx, dy)
        if name == "brightness_contrast":
            factor = rng.uniform(1.0 - self.contrast, 1.0 + self.contrast)
            offset = rng.uniform(-self.brightness, self.brightness)
            return adjust_brightness_contrast(image, factor, offset)
        if name == "low_light":
            gamma = rng.uniform(*self.gamma_range)
            sigma = rng.uniform(*self.noise_range)
            return low_light(image, gamma, sigma, rng)
        if name == "blur":
            if rng.random() < self.motion_blur_share:
                low, high = self.motion_length_range
                length = int(rng.integers(low, high, endpoint=True))
                return motion_blur(image, length, rng.uniform(0.0, 180.0))
            return gaussian_blur(image, rng.uniform(*self.blur_sigma_range))
        if name == "jpeg":
            low, high = self.jpeg_quality_range
            return jpeg_reencode(image, int(rng.integers(low, high, endpoint=True)))
        raise ValueError(f"unknown op {name!r}")  # pragma: no cover - OPS is closed

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Augmented copy of ``image`` (same shape and dtype; the input is left untouched)."""
        _check_image(image)
        rng = self.rng if rng is None else rng
        out = np.ascontiguousarray(image)
        for name in OPS:
            if rng.random() < self.probabilities[name]:
                out = self._apply(name, out, rng)
        return out if out is not image else image.copy()

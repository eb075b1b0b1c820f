"""Tests for gate.recognition.metric.augment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gate.recognition.metric.augment import (
    OPS,
    DoorCameraAugment,
    adjust_brightness_contrast,
    gaussian_blur,
    hflip,
    jpeg_reencode,
    low_light,
    motion_blur,
    rotate,
    shift_crop,
)


def face_chip(size: int = 150, seed: int = 0) -> np.ndarray:
    """A textured, asymmetric BGR test image."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, size=(size, size, 3), dtype=np.uint8)
    cv2.circle(image, (size // 3, size // 2), size // 6, (40, 90, 220), -1)
    return image


def only(*names: str) -> dict[str, float]:
    """Probabilities: 1 for the named ops, 0 for the rest."""
    return {name: (1.0 if name in names else 0.0) for name in OPS}


def test_shape_dtype_preserved_and_input_untouched() -> None:
    image = face_chip()
    original = image.copy()
    augment = DoorCameraAugment(p=1.0, seed=0)
    for _ in range(5):
        out = augment(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out.flags["C_CONTIGUOUS"]
        assert not np.array_equal(out, image)
    np.testing.assert_array_equal(image, original)


def test_deterministic_for_a_seed() -> None:
    image = face_chip()
    a = DoorCameraAugment(p=0.5, seed=123)
    b = DoorCameraAugment(p=0.5, seed=123)
    c = DoorCameraAugment(p=0.5, seed=124)
    outs_a = [a(image) for _ in range(6)]
    outs_b = [b(image) for _ in range(6)]
    outs_c = [c(image) for _ in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(outs_a, outs_c, strict=True))
    # an explicit generator gives the same stream as the seed
    d = DoorCameraAugment(p=0.5)
    rng = np.random.default_rng(123)
    assert np.array_equal(d(image, rng=rng), outs_a[0])


def test_flip_actually_flips() -> None:
    image = face_chip()
    out = DoorCameraAugment(p=only("flip"), seed=0)(image)
    np.testing.assert_array_equal(out, image[:, ::-1])
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(hflip(hflip(image)), image)


def test_zero_probability_is_an_identity_copy() -> None:
    image = face_chip()
    out = DoorCameraAugment(p=0.0, seed=0)(image)
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (150, 150)])
def test_every_op_on_tiny_and_greyscale_images(op: str, shape: tuple[int, int]) -> None:
    grey = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    augment = DoorCameraAugment(p=only(op), seed=0)
    for _ in range(3):
        out = augment(image)
        assert out.shape == image.shape and out.dtype == np.uint8


def test_all_ops_together_on_1x1() -> None:
    image = np.full((1, 1, 3), 128, np.uint8)
    augment = DoorCameraAugment(p=1.0, seed=5)
    outs = [augment(image) for _ in range(10)]
    assert all(out.shape == (1, 1, 3) and out.dtype == np.uint8 for out in outs)


def test_brightness_contrast() -> None:
    image = face_chip()
    brighter = adjust_brightness_contrast(image, 1.0, 30.0)
    assert brighter.mean() == pytest.approx(image.mean() + 30.0, abs=1.0)
    flatter = adjust_brightness_contrast(image, 0.5, 0.0)
    assert flatter.std() == pytest.approx(image.std() * 0.5, rel=0.02)
    assert flatter.mean() == pytest.approx(image.mean(), abs=1.0)
    np.testing.assert_array_equal(adjust_brightness_contrast(image, 1.0, 0.0), image)


def test_low_light_darkens_and_adds_noise() -> None:
    image = np.full((20, 20, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    dark = low_light(image, gamma=2.0, noise_sigma=0.0, rng=rng)
    expected = round(255 * (128 / 255) ** 2)  # 64
    assert np.all(dark == expected)
    noisy = low_light(image, gamma=2.0, noise_sigma=5.0, rng=rng)
    assert 3.0 < noisy.astype(float).std() < 7.0
    assert abs(noisy.astype(float).mean() - expected) < 1.5


def test_blurs_smooth_a_checkerboard() -> None:
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)
    for blurred in (gaussian_blur(image, 1.0), motion_blur(image, 5, 30.0)):
        assert blurred.shape == image.shape
        assert blurred.std() < 0.5 * image.std()
    np.testing.assert_array_equal(gaussian_blur(image, 0.0), image)


def test_rotate_and_shift_crop() -> None:
    image = face_chip()
    np.testing.assert_array_equal(rotate(image, 0.0), image)
    np.testing.assert_array_equal(shift_crop(image, 1.0, 0.0, 0.0), image)
    turned = rotate(image, 4.0)
    assert turned.shape == image.shape and not np.array_equal(turned, image)
    # a 0.8-size window whose centre moves right by 10% of the width: x 30..150, y 15..135
    cropped = shift_crop(image, 0.8, 0.1, 0.0)
    expected = cv2.resize(image[15:135, 30:150], (150, 150), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(cropped, expected)


def test_jpeg_reencode_is_lossy_but_close() -> None:
    image = face_chip()
    low, high = jpeg_reencode(image, 10), jpeg_reencode(image, 95)
    err_low = np.abs(low.astype(int) - image).mean()
    err_high = np.abs(high.astype(int) - image).mean()
    assert low.shape == image.shape and low.dtype == np.uint8
    assert 0 < err_high < err_low < 40


def test_rejects_bad_input_and_options() -> None:
    augment = DoorCameraAugment(seed=0)
    with pytest.raises(ValueError, match="H x W x 3"):
        augment(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        augment(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="unknown augment ops"):
        DoorCameraAugment(p={"sharpen": 0.5})
    with pytest.raises(ValueError, match="probability"):
        DoorCameraAugment(p=1.5)

"""Speed of the torch port of dlib's face-recognition ResNet against dlib itself.

Encodes real aligned face chips (found in ``../shared/data`` with dlib's HOG detector and
5-point alignment, or dlib's pre-aligned ``people/dlib_johns`` chips when dlib is absent) and
prints a markdown table of median times per batch and per face, faces per second and the
speed-up over dlib's ``compute_face_descriptor`` at the same batch size.

Examples::

    python bench/encoder_speed.py                      # CPU, batch 1 and 8, torch vs dlib
    python bench/encoder_speed.py --threads 1
    python bench/encoder_speed.py --device cuda --dtype fp16 --batch-sizes 256,1024 --no-dlib

Torch is timed on input already on the device (model forward only, under
``torch.inference_mode``); dlib is timed on the uint8 chips it takes. Batches larger than the
number of chips reuse chips cyclically.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from gate.recognition.nn.dlib_resnet import chips_to_tensor, default_model_path, load_dlib_resnet

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _have_dlib() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


def load_chips(count: int) -> list[np.ndarray]:
    """Up to ``count`` aligned 150x150 RGB chips of real faces."""
    import cv2

    chips: list[np.ndarray] = []
    if _have_dlib():
        import dlib

        models = default_model_path().parent
        detector = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        for path in sorted((DATA / "lfw-view1" / "images").glob("*/*.jpg")):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            boxes = detector(rgb, 1)
            if boxes:
                box = max(boxes, key=lambda r: r.area())
                chips.append(dlib.get_face_chip(rgb, predictor(rgb, box), size=150, padding=0.25))
            if len(chips) >= count:
                break
    else:
        for path in sorted((DATA / "people" / "dlib_johns").glob("*/*")):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None and bgr.shape[:2] == (150, 150):
                chips.append(np.ascontiguousarray(bgr[:, :, ::-1]))
            if len(chips) >= count:
                break
    if not chips:
        sys.exit(f"no face chips found under {DATA}")
    return chips


def cyclic(chips: list[np.ndarray], start: int, size: int) -> list[np.ndarray]:
    return [chips[(start + k) % len(chips)] for k in range(size)]


def median_seconds(
    run: Callable[[int], object], warmup: int, repeats: int, sync: Callable[[], None]
) -> float:
    """Median wall time of ``run(i)`` over ``repeats`` calls, after ``warmup`` calls."""
    for i in range(warmup):
        run(i)
    sync()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(warmup + i)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--fuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold the affine layers into the convolutions",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated, e.g. 1,8 or 256,1024")
    p.add_argument("--chips", type=int, default=32, help="distinct real chips to cycle through")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--dlib",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time dlib (when importable)",
    )
    p.add_argument(
        "--dlib-max-batch", type=int, default=16, help="skip dlib for larger batches (it is slow)"
    )
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    chips = load_chips(args.chips)
    model = load_dlib_resnet(
        fuse=args.fuse, channels_last=args.channels_last, device=device, dtype=dtype
    )
    forward = torch.compile(model) if args.compile else model
    use_dlib = args.dlib and _have_dlib()
    recogniser = None
    if use_dlib:
        import dlib

        recogniser = dlib.face_recognition_model_v1(str(default_model_path()))

    rows = []
    for size in sizes:
        batches = [chips_to_tensor(cyclic(chips, k * size, size)).to(device) for k in range(4)]
        with torch.inference_mode():
            t = median_seconds(
                lambda i, b=batches: forward(b[i % len(b)]), args.warmup, args.repeats, sync
            )
        row = {"batch": size, "torch": t, "dlib": None}
        if recogniser is not None and size <= args.dlib_max_batch:
            if size == 1:

                def run(i: int) -> object:
                    return recogniser.compute_face_descriptor(chips[i % len(chips)])
            else:

                def run(i: int, size: int = size) -> object:
                    return recogniser.compute_face_descriptor(cyclic(chips, i * size, size))

            row["dlib"] = median_seconds(run, 1, max(3, args.repeats // 3), lambda: None)
        rows.append(row)

    # Agreement with dlib on the chips, at this device/dtype.
    diff = None
    if recogniser is not None:
        sample = chips[: min(len(chips), 16)]
        ref = np.array(recogniser.compute_face_descriptor(sample), dtype=np.float64)
        with torch.inference_mode():
            ours = forward(chips_to_tensor(sample).to(device)).float().cpu().numpy()
        diff = float(np.abs(ours - ref).max())

    cpu = platform.processor() or platform.machine()
    flags = [
        args.dtype,
        "channels_last" if args.channels_last else "contiguous",
        "fused" if args.fuse else "unfused",
    ] + (["compiled"] if args.compile else [])
    print(
        f"torch {torch.__version__} on {device} ({cpu}), {torch.get_num_threads()} threads, "
        f"{', '.join(flags)}; {len(chips)} distinct real chips; median of {args.repeats} runs "
        f"after {args.warmup} warm-up runs\n"
    )
    print("| encoder | batch | ms / batch | ms / face | faces / s | speed-up vs dlib |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        size, t, d = row["batch"], row["torch"], row["dlib"]
        ratio = f"{d / t:.1f}x" if d else "n/a"
        print(
            f"| torch | {size} | {t * 1e3:.2f} | {t * 1e3 / size:.2f} | {size / t:.0f} | {ratio} |"
        )
        if d:
            print(
                f"| dlib | {size} | {d * 1e3:.2f} | {d * 1e3 / size:.2f} | {size / d:.0f} | 1.0x |"
            )
    if diff is not None:
        print(f"\nmax |torch - dlib| over {min(len(chips), 16)} chips: {diff:.2e}")


if __name__ == "__main__":
    main()

"""How many 640x480 doors at 10 fps one box sustains, with and without motion gating.

The clip (``--seconds`` at 10 fps, 640x480) is composed from the shared clips:
a still corridor (the first frame of ``crowd_no_faces.mp4``, which shows no
usable face, with a camera's sensor noise) and, in 20 % of its frames, three
face segments of equal length: people walking in (``pedestrians_1080p.mp4``,
cut out where a door's camera would look), the ``hamilton_short.mp4`` stage
(letterboxed) and the known people of ``gate/samples/door.mp4``. Each door
plays its own copy, shifted in time so that the doors' faces come in turn (the
shifts spread evenly over the gap from one face segment to the next), through
the real :class:`gate.runtime.runner.Runner` in real time (a capture thread per
door at the file's 10 fps, the bounded queue that drops the oldest, one loop
thread per door, the encoder shared across doors). Four
people are enrolled (the two of ``gate/samples/people`` and the two of
``video/hamilton_known``); the ``log`` actuator only.

A frame's age at decision is measured from the moment a 10 fps camera would
have given it (the door's first frame plus ``index / 10`` s) to the moment the
loop has decided and acted on it, so a capture thread starved of CPU counts
too. The first second of each door is left out (detectors built, threads
started). "CPU per door" is the process's CPU time over the run's wall time,
per door (all threads: decoding, motion, detection, encoding, the log), which
other work on the box disturbs far less than the ages do. A count of doors is
sustained when the 99th percentile of age is at most ``--goal-ms`` and at most
1 % of frames were dropped; the strict reading ("no frame older") is shown too.

    python bench/door_capacity.py [--data ../shared/data] [--doors 1,2,4,6,8,12,16]
        [--seconds 30] [--modes on,off]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from gate.config import parse_config
from gate.demo import sample_path
from gate.plugins import make_plugin_manager
from gate.recognition.enrollment import enroll
from gate.recognition.images import cv2, list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.loop import DoorLoop
from gate.runtime.runner import Runner
from gate.storage.database import GateDB

FPS = 10
SIZE = (640, 480)
FACE_SHARE = 0.2
#: where a door's camera would look in pedestrians_1080p.mp4 (x, y): faces of 70-100 px
WALKWAY = (480, 480)


def read(path: Path, start: int, count: int, step: float, crop=None, pad: bool = False) -> list:
    """``count`` frames from frame ``start`` on, every ``step``-th, as 640x480 images."""
    cv = cv2()
    capture = cv.VideoCapture(str(path))
    capture.set(cv.CAP_PROP_POS_FRAMES, start)
    frames, index, wanted = [], 0, 0.0
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        if index >= round(wanted):
            wanted += step
            if crop is not None:
                x, y = crop
                image = image[y : y + SIZE[1], x : x + SIZE[0]]
            elif pad:  # letterbox a wider picture
                h, w = image.shape[:2]
                scale = SIZE[0] / w
                image = cv.resize(image, (SIZE[0], round(h * scale)), interpolation=cv.INTER_AREA)
                top = (SIZE[1] - image.shape[0]) // 2
                image = cv.copyMakeBorder(image, top, SIZE[1] - image.shape[0] - top, 0, 0,
                                          cv.BORDER_CONSTANT)  # fmt: skip
            else:
                image = cv.resize(image, SIZE, interpolation=cv.INTER_AREA)
            frames.append(np.ascontiguousarray(image))
        index += 1
    capture.release()
    if len(frames) < count:
        raise SystemExit(f"{path}: fewer than {count} frames from {start}")
    return frames


def noisy(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``image`` held still for ``count`` frames, with sensor noise (sigma 2 grey levels)."""
    out = []
    for _ in range(count):
        noise = rng.normal(0.0, 2.0, image.shape).round().astype(np.int16)
        out.append(np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def compose(data: Path, seconds: float) -> list[np.ndarray]:
    """The door's clip: a still corridor with three face segments, 20 % of the frames."""
    total = round(seconds * FPS)
    face = round(total * FACE_SHARE / 3)
    video = data / "video"
    segments = [
        read(video / "pedestrians_1080p.mp4", 0, face, 2.5, crop=WALKWAY),
        read(video / "hamilton_short.mp4", 120, face, 3.0, pad=True),
        read(sample_path("door.mp4"), 30, face, 1.0),  # obama
    ]
    corridor = read(video / "crowd_no_faces.mp4", 0, 1, 1.0)[0]
    rng = np.random.default_rng(0)
    gap = (total - 3 * face) // 3
    frames: list[np.ndarray] = []
    for segment in segments:
        frames += noisy(corridor, gap, rng) + segment
    return frames + noisy(corridor, total - len(frames), rng)


def write(path: Path, frames: list[np.ndarray]) -> Path:
    cv = cv2()
    writer = cv.VideoWriter(str(path), cv.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


class Ages:
    """Records, for every frame a door decides on, when it was decided (wraps the loop)."""

    def __init__(self):
        self.seen: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        original = DoorLoop.process
        ages = self

        def process(loop: DoorLoop, frame):
            try:
                return original(loop, frame)
            finally:
                ages.seen[loop.door.name].append((frame.index, frame.captured_mono,
                                                  time.monotonic()))  # fmt: skip

        DoorLoop.process = process

    def of(self, doors: list[str], warmup: int = FPS) -> np.ndarray:
        """Ages (ms) of the doors' frames after the first ``warmup``, against a 10 fps clock."""
        ages = []
        for door in doors:
            seen = self.seen.pop(door, [])
            if not seen:
                continue
            first_index, first_at, _ = seen[0]
            for index, _, done in seen:
                if index >= warmup:
                    due = first_at + (index - first_index) / FPS
                    ages.append((done - due) * 1000.0)
        return np.array(ages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--doors", default="1,2,4,6,8,12,16")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--modes", default="on,off", help="motion gating on, off, or both")
    parser.add_argument("--goal-ms", type=float, default=200.0)
    args = parser.parse_args()
    counts = [int(n) for n in args.doors.split(",")]
    registry = make_plugin_manager(entry_points=False).registry
    base = Pipeline(parse_config({"pipeline": {"actuators": ["log"]}}), registry)
    frames = compose(args.data, args.seconds)
    with_face = sum(any(f.size >= 48 for f in base.detector.detect(im)) for im in frames)
    print(f"clip: {len(frames)} frames at {FPS} fps, {SIZE[0]}x{SIZE[1]}; a face of 48 px or "
          f"more in {with_face} ({100 * with_face / len(frames):.0f} %)")  # fmt: skip
    print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}")
    ages = Ages()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = GateDB(Path(tmp) / "bench.db")
        people = [p for p in sorted(sample_path("people").iterdir()) if p.is_dir()]
        for person in people:
            enroll(db, base, person.name, list_images(person))
        for photo in sorted((args.data / "video" / "hamilton_known").iterdir()):
            enroll(db, base, photo.stem, [photo])
        base.recognise(frames[0])  # warm up the models once
        clips: dict[int, Path] = {}
        print("\n| motion | doors | frames | dropped | detected | age median | p90 | p99 | max "
              "| CPU per door | load | sustained |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for mode in args.modes.split(","):
            config = parse_config(
                {"pipeline": {"actuators": ["log"]}, "capture": {"motion": mode == "on"}}
            )
            failures = 0
            for n in counts:
                names = []
                for i in range(n):
                    shift = i * (len(frames) // 3) // n  # spread over a face segment's period
                    if shift not in clips:
                        rotated = frames[shift:] + frames[:shift]
                        clips[shift] = write(Path(tmp) / f"door-{shift}.mp4", rotated)
                    name = f"{mode}-{n}-{i}"
                    db.add_door(name, source=str(clips[shift]))
                    names.append(name)
                pipeline = Pipeline(config, registry)
                pipeline.detector, pipeline.encoder = base.detector, base.encoder
                load = os.getloadavg()[0]
                cpu, wall = time.process_time(), time.monotonic()
                stats = Runner(
                    pipeline, db.path, doors_for_run(db, config, names, None), realtime=True
                ).run()
                cores = (time.process_time() - cpu) / (time.monotonic() - wall) / n
                age = ages.of(names)
                processed = sum(s.frames for s in stats.values())
                dropped = sum(s.dropped for s in stats.values())
                skipped = sum(s.skipped for s in stats.values())
                p99 = float(np.percentile(age, 99))
                ok = p99 <= args.goal_ms and dropped <= 0.01 * (processed + dropped)
                strict = ok and float(age.max()) <= args.goal_ms and dropped == 0
                results[(mode, n)] = (ok, strict, cores)
                print(
                    f"| {mode} | {n} | {processed} | {dropped} | "
                    f"{100 * (processed - skipped) / max(processed, 1):.0f} % | "
                    f"{np.median(age):.0f} ms | {np.percentile(age, 90):.0f} ms | {p99:.0f} ms | "
                    f"{age.max():.0f} ms | {cores:.2f} | {load:.1f} | "
                    f"{'yes' if ok else 'no'}{' (every frame)' if strict else ''} |",
                    flush=True,
                )
                failures = 0 if ok else failures + 1
                if failures >= 2:
                    break
        db.close()
    for mode in args.modes.split(","):
        met = [n for (m, n), (ok, _, _) in results.items() if m == mode and ok]
        strict = [n for (m, n), (_, s, _) in results.items() if m == mode and s]
        cores = np.median([c for (m, _), (_, _, c) in results.items() if m == mode])
        print(f"motion {mode}: most doors sustained {max(met, default=0)} "
              f"(every frame within the goal: {max(strict, default=0)}); "
              f"{cores:.2f} of a core per door, so {os.cpu_count() / cores:.1f} doors "
              "would use every core")  # fmt: skip
    base.close()


if __name__ == "__main__":
    main()

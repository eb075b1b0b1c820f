"""Per-frame latency of the door loop on the hamilton clip, with the two known people enrolled.

Runs ``gate``'s loop (non-realtime: every frame is processed as soon as the
previous one is done) with the ``log`` actuator only, and reports the
capture-to-decision latency per frame (median, p90), the time per stage, and
the decisions. Pass ``--encoder dlib`` to time dlib's own encoder instead.

    python bench/loop_latency.py [--data ../shared/data] [--encoder dlib-torch]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.enrollment import enroll
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB


class Timed:
    """Wraps a component method and records how long each call took."""

    def __init__(self, target, method: str):
        self.calls: list[float] = []
        original = getattr(target, method)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.append((time.perf_counter() - started) * 1000)

        setattr(target, method, timed)

    def summary(self) -> str:
        a = np.array(self.calls)
        return f"median {np.median(a):.1f} ms, p90 {np.percentile(a, 90):.1f} ms ({len(a)} calls)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--encoder", default="dlib-torch")
    parser.add_argument("--threshold", type=float, help="override the encoder's default")
    parser.add_argument("--min-face-px", type=int, help="override [recognition] min_face_px")
    args = parser.parse_args()
    video = Path(args.data) / "video"
    recognition = {"threshold": args.threshold, "min_face_px": args.min_face_px}
    config = parse_config(
        {
            "pipeline": {"encoder": args.encoder, "actuators": ["log"]},
            "recognition": {k: v for k, v in recognition.items() if v is not None},
        },
        origin="bench",
    )
    pipeline = Pipeline(config, make_plugin_manager(entry_points=False).registry)
    with tempfile.TemporaryDirectory() as tmp:
        db = GateDB(Path(tmp) / "bench.db")
        for photo in sorted((video / "hamilton_known").iterdir()):
            assert enroll(db, pipeline, photo.stem, [photo]).stored
        detect = Timed(pipeline.detector, "detect")
        encode = Timed(pipeline.encoder, "encode")
        match = Timed(pipeline.matcher, "match")
        events = []
        doors = doors_for_run(db, config, ["stage"], str(video / "hamilton_short.mp4"))
        started = time.perf_counter()
        stats = Runner(pipeline, db.path, doors, on_event=events.append).run()["stage"]
        wall = time.perf_counter() - started
        db.close()
    print(
        f"encoder {args.encoder} (strictest threshold {pipeline.threshold:.3f}, min face "
        f"{config.recognition.min_face_px} px): {stats.frames} frames in {wall:.1f} s"
    )
    print(
        f"capture to decision per frame: median {stats.latency(50):.1f} ms, "
        f"p90 {stats.latency(90):.1f} ms"
    )
    print(f"detect: {detect.summary()}")
    print(f"encode (frames with faces): {encode.summary()}")
    print(f"match: {match.summary()}")
    for event in events:
        who = event.person or "-"
        distance = "-" if event.distance is None else f"{event.distance:.3f}"
        limit = "-" if event.threshold is None else f"{event.threshold:.3f}"
        print(
            f"  {event.time} {event.decision:<7} {event.reason:<11} {who:<20} {distance} "
            f"(threshold {limit}, track {event.track}, {event.frames} views)"
        )
    pipeline.close()


if __name__ == "__main__":
    main()

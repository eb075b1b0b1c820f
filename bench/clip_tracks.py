"""Per face track on the shared clips: who is granted at each stated stranger acceptance.

Each clip is decoded, detected and encoded once (every frame); then for each
stated risk the door's decider (face tracks, fused views, the calibrated
threshold) runs over the cached recognitions. Doors:

* ``hamilton``: the two known people of ``video/hamilton_known`` enrolled,
  over ``hamilton_short.mp4`` (both should be granted, nobody else);
* ``strangers``: the ``people/bbt`` and ``people/deepface`` sets enrolled
  (nobody of them is in the clips), over every clip: nobody may be granted.

    python bench/clip_tracks.py [--data ../shared/data] [--risks 0.0001,0.0003,0.001,0.003,0.01]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gate.config import DecisionConfig, parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.decisions import DoorDecider
from gate.storage.database import GateDB


def decode(pipeline: Pipeline, clip: Path):
    """``(clock, recognitions)`` for every frame (matched against an empty gallery)."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames, index = [], 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append((index / fps, pipeline.recognise(image)))
        index += 1
    capture.release()
    return frames


def run(pipeline: Pipeline, frames, names: dict[int, str]) -> list[str]:
    """The door's decisions over cached recognitions, rematched at the pipeline's calibration."""
    import numpy as np

    decider = DoorDecider(
        DecisionConfig(), lambda fused, spread, views: pipeline.judge(fused, views, spread=spread)
    )
    out = []
    for clock, recognitions in frames:
        usable = [r for r in recognitions if r.quality is not None]
        if usable:
            matches = pipeline.match(np.stack([r.embedding for r in usable]),
                                     [r.quality for r in usable])  # fmt: skip
            rematched = [r.__class__(r.face, r.embedding, m, r.quality, t)
                         for r, (m, t) in zip(usable, matches, strict=True)]  # fmt: skip
        else:
            rematched = []
        rest = [r for r in recognitions if r.quality is None]
        for outcome in decider.observe(rematched + rest, clock):
            out.append(describe(outcome, names))
    out += [describe(o, names) for o in decider.finish(float("inf"))]
    return out


def describe(outcome, names) -> str:
    m = outcome.match
    who = names.get(m.person_id) if m is not None and m.person_id is not None else "-"
    distance = f"{m.distance:.3f}" if m is not None else "-"
    limit = f"{outcome.threshold:.3f}" if outcome.threshold is not None else "-"
    return f"{outcome.decision} {outcome.reason} {who} {distance}/{limit} ({outcome.frames} views)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--risks", default="0.0001,0.0003,0.001,0.003,0.01")
    parser.add_argument("--doors", default="hamilton,strangers")
    args = parser.parse_args()
    doors = args.doors.split(",")
    registry = make_plugin_manager(entry_points=False).registry
    base = Pipeline(parse_config({"pipeline": {"actuators": ["log"]}}), registry)
    video = args.data / "video"
    wanted = sorted(video.glob("*.mp4")) if "strangers" in doors else [video / "hamilton_short.mp4"]
    clips = {c.stem: decode(base, c) for c in wanted}
    galleries = {
        "hamilton": {p.stem: [p] for p in sorted((video / "hamilton_known").iterdir())},
        "strangers": {
            f"{s}/{d.name}": list_images(d)
            for s in ("bbt", "deepface")
            for d in sorted((args.data / "people" / s).iterdir())
            if d.is_dir()
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        for door, folders in galleries.items():
            if door not in doors:
                continue
            db = GateDB(Path(tmp) / f"{door}.db")
            for name, photos in folders.items():
                enroll(db, base, name.replace("/", "-"), photos, skip_refused=True)
            names = db.names()
            print(f"\n## door {door}: {len(names)} people enrolled")
            for risk in (float(r) for r in args.risks.split(",")):
                config = parse_config(
                    {
                        "pipeline": {"actuators": ["log"]},
                        "recognition": {"stranger_acceptance": risk},
                    }
                )
                pipeline = Pipeline(config, registry)
                pipeline.encoder = base.encoder  # the same model, built once
                pipeline.detector = base.detector
                pipeline.load_templates(db)
                thresholds = ", ".join(
                    f"{c} {t:.3f}" for c, t in pipeline.calibration.thresholds.items()
                )
                print(f"\nstranger_acceptance {risk}: thresholds {thresholds}")
                for clip, frames in clips.items():
                    if door == "hamilton" and clip != "hamilton_short":
                        continue
                    decisions = run(pipeline, frames, names)
                    granted = [d for d in decisions if d.startswith("granted")]
                    print(f"  {clip}: {len(granted)} granted, "
                          f"{len(decisions) - len(granted)} denied")  # fmt: skip
                    for line in decisions:
                        print(f"    {line}")
            db.close()


if __name__ == "__main__":
    main()

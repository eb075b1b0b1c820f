"""Identification on the shared photo sets: who is recognised, who is refused.

1. The face_recognition set as the tests use it: everyone in
   people/face_recognition enrolled; the probes must name the right person,
   the unknown faces nobody, and the no-face images no face.
2. Open-set identification on each labelled set (people/face_recognition,
   deepface, bbt, dlib_johns): a third of the identities are held out as
   strangers; the rest enroll their first photo and probe with the others.
   Reported: rank-1, DIR at 1% false alarms, and at the threshold in force (calibrated
   for that gallery at the default stranger acceptance, colour faces) the
   rate of correct grants and of strangers refused.

    python bench/identify_sets.py [--data ../shared/data] [--encoders dlib-torch,dlib]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.evaluation import open_set_identification
from gate.recognition.images import list_images, read_image
from gate.recognition.pipeline import Pipeline

SETS = ["face_recognition", "deepface", "bbt", "dlib_johns"]


def largest_face_embedding(pipeline: Pipeline, path: Path) -> np.ndarray | None:
    pixels = read_image(path).pixels
    faces = pipeline.detector.detect(pixels)
    if not faces:
        return None
    return pipeline.normalise(pipeline.encoder.encode(pixels, [max(faces, key=lambda f: f.size)]))[
        0
    ]


def shared_sets(pipeline: Pipeline, data: Path) -> None:
    people = data / "people" / "face_recognition"
    names, gallery = [], []
    for person in sorted(p for p in people.iterdir() if p.is_dir()):
        for photo in list_images(person):
            vector = largest_face_embedding(pipeline, photo)
            if vector is not None:
                gallery.append(vector)
                names.append(person.name)
    people_names = sorted(set(names))
    pipeline.fit(np.stack(gallery), np.array([people_names.index(n) for n in names]))

    def who(path: Path) -> list[str]:
        out = []
        for rec in pipeline.recognise(read_image(path).pixels):
            m = rec.match
            label = people_names[m.person_id] if m.status == "match" else m.status
            out.append(f"{label} ({m.distance:.3f}, nearest {people_names[m.candidate_id]})")
        return out or ["no face"]

    for probe in list_images(data / "probes" / "face_recognition"):
        print(f"  probe {probe.name}: {', '.join(who(probe))}")
    for probe in list_images(data / "negatives" / "unknown_face"):
        print(f"  unknown {probe.name}: {', '.join(who(probe))}")
    scenes = list_images(data / "negatives" / "no_face")
    empty = [p for p in scenes if who(p) == ["no face"]]
    print(f"  no_face: {len(empty)} of {len(scenes)} give no face")


def open_set(pipeline: Pipeline, data: Path, name: str) -> str:
    root = data / "people" / name
    people = sorted(p for p in root.iterdir() if p.is_dir())
    strangers = {p.name for i, p in enumerate(people) if i % 3 == 2}
    gallery, gallery_ids, probes, probe_ids = [], [], [], []
    for person in people:
        for index, photo in enumerate(list_images(person)):
            vector = largest_face_embedding(pipeline, photo)
            if vector is None:
                continue
            if person.name not in strangers and index == 0:
                gallery.append(vector)
                gallery_ids.append(person.name)
            else:
                probes.append(vector)
                probe_ids.append(person.name)
    ids = np.unique(gallery_ids, return_inverse=True)[1]
    threshold = pipeline.fit(np.stack(gallery), ids).threshold("colour")
    result = open_set_identification(
        np.stack(gallery), gallery_ids, np.stack(probes), probe_ids, threshold=threshold, far=0.01
    )
    return (
        f"| {name} | {len(gallery)} | {result.n_known} | {result.n_strangers} "
        f"| {result.rank1 * 100:.1f}% | {result.dir_at_far * 100:.1f}% "
        f"| {result.dir_at_threshold * 100:.1f}% | {result.stranger_rejection * 100:.1f}% |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--encoders", default="dlib-torch,dlib")
    args = parser.parse_args()
    data = Path(args.data)
    registry = make_plugin_manager(entry_points=False).registry
    for encoder in args.encoders.split(","):
        pipeline = Pipeline(parse_config({"pipeline": {"encoder": encoder}}), registry)
        print(f"\n## encoder {encoder} (stated stranger acceptance "
              f"{pipeline.config.recognition.stranger_acceptance})")  # fmt: skip
        shared_sets(pipeline, data)
        print()
        print(
            "| set | enrolled | probes of enrolled | stranger probes | rank-1 "
            "| DIR @ 1% FA | granted @ threshold | strangers refused |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in SETS:
            print(open_set(pipeline, data, name))
        pipeline.close()


if __name__ == "__main__":
    main()

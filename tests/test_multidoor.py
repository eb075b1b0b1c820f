"""Two doors at once from two clips: each logs only its own events; faces share forward passes."""

from __future__ import annotations

import pytest

from gate.config import parse_config
from gate.demo import sample_path
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB
from tests.conftest import data_path

pytestmark = pytest.mark.slow


def test_two_doors_run_together_and_keep_their_own_events(tmp_path, pm):
    street = data_path("video", "pedestrians_1080p.mp4")
    config = parse_config({"pipeline": {"actuators": ["log"]}})
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    for person in sorted(p for p in sample_path("people").iterdir() if p.is_dir()):
        assert enroll(db, pipeline, person.name, list_images(person)).stored
    db.add_door("front", source=str(sample_path("door.mp4")))
    db.add_door("street", source=str(street), threshold=0.5, confirm_frames=2, window_frames=4)
    seen: dict[str, list] = {"front": [], "street": []}
    runner = Runner(
        pipeline,
        db.path,
        doors_for_run(db, config, [], None),
        hook=pm.hook,
        on_event=lambda event: seen[event.door].append(event.id),
    )
    stats = runner.run()
    assert stats["front"].frames == 120 and stats["street"].frames == 105
    front = db.events(door="front")
    street_events = db.events(door="street")
    assert sorted(e.id for e in front) == sorted(seen["front"])
    assert sorted(e.id for e in street_events) == sorted(seen["street"])
    granted = {e.person for e in front if e.decision == "granted"}
    assert granted == {"obama", "biden"}
    assert street_events, "strangers walking to the street camera are denied and logged"
    assert all(e.decision == "denied" and e.person is None for e in street_events)
    assert len(front) + len(street_events) == len(db.events())
    pipeline.close()
    db.close()


def test_faces_of_several_doors_share_one_forward_pass(pm):
    import numpy as np

    from gate.recognition.images import read_image
    from gate.runtime.batching import SharedEncoder

    pipeline = Pipeline(parse_config({}), pm.registry)
    image = read_image(sample_path("people", "obama", "obama.jpg")).pixels
    faces = pipeline.detector.detect(image)
    shared = SharedEncoder(pipeline.encoder, parties=3, wait_s=0.5)
    import threading

    results = [None] * 3

    def door(i: int) -> None:
        results[i] = shared.encode(image, faces)

    threads = [threading.Thread(target=door, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert shared.batches == [3]
    alone = pipeline.encoder.encode(image, faces)
    for result in results:
        np.testing.assert_allclose(result, alone, atol=1e-4)


def test_people_enrolled_while_gate_runs_are_recognised_without_a_restart(tmp_path, pm):
    import threading
    import time

    config = parse_config({"pipeline": {"actuators": ["log"]}})
    running = Pipeline(config, pm.registry)
    admin = Pipeline(config, pm.registry)  # the admin's own process, in effect
    db = GateDB(tmp_path / "gate.db")
    db.add_door("front", source=str(sample_path("door.mp4")))
    runner = Runner(
        running, db.path, doors_for_run(db, config, [], None), realtime=True, reload_s=0.5
    )
    thread = threading.Thread(target=runner.run)
    thread.start()
    time.sleep(1.5)  # the clip shows Obama from 3.0 s to 5.5 s
    obama = sorted((sample_path("people") / "obama").iterdir())
    assert enroll(db, admin, "obama", obama).stored
    thread.join(timeout=60)
    granted = [e.person for e in db.events() if e.decision == "granted"]
    assert granted == ["obama"]
    running.close()
    admin.close()
    db.close()

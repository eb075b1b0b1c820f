"""The ``faiss`` matcher gives the ``nearest`` matcher's verdicts, on real faces.

The faces of the labelled people sets are embedded once (as the matcher sees
them: normalised by the default pipeline); each person's last photo is held out
as a probe, the rest enrolled. Thresholds are the ones gate calibrates for this
gallery, one per face.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from gate.components import Match
from gate.recognition.calibration import calibrate
from gate.recognition.images import list_images, read_image
from gate_plugins.faiss_matcher import FaissMatcher, FaissOptions
from gate_plugins.nearest import NearestMatcher, NearestOptions
from tests.conftest import data_path

SETS = ("bbt", "dlib_johns", "face_recognition")
MARGIN = 0.04
RULES = ("mean", "nearest")


@dataclass(frozen=True)
class Faces:
    """Enrolled templates, probes of the same people, strangers, and a threshold per rule."""

    templates: np.ndarray
    people: np.ndarray
    probes: np.ndarray
    probe_people: np.ndarray
    strangers: np.ndarray
    thresholds: dict[str, float]


def largest_faces(pipeline, paths) -> list:
    items = []
    for path in paths:
        pixels = read_image(path).pixels
        faces = pipeline.detector.detect(pixels)
        if faces:
            items.append((pixels, [max(faces, key=lambda f: f.size)]))
    vectors = pipeline.encoder.encode_many(items)
    return [v[0] for v in vectors]


@pytest.fixture(scope="module")
def faces(default_pipeline) -> Faces:
    vectors, people, held_out = [], [], []
    persons = [p for s in SETS for p in sorted(data_path("people", s).iterdir()) if p.is_dir()]
    for pid, person in enumerate(persons, start=1):
        found = largest_faces(default_pipeline, list_images(person))
        vectors += found
        people += [pid] * len(found)
        held_out.append(len(vectors) - 1)
    stranger_paths = sorted(data_path("negatives", "unknown_face").iterdir())
    strangers = largest_faces(default_pipeline, stranger_paths)
    vectors = default_pipeline.normalise(np.array(vectors))
    people = np.array(people)
    probe = np.zeros(len(vectors), bool)
    probe[held_out] = True
    encoder = default_pipeline.encoder
    thresholds = {
        rule: calibrate(
            encoder.impostor_model(rule), vectors[~probe], people[~probe], 0.005,
            fallback=encoder.threshold,
        ).threshold("colour")
        for rule in RULES
    }  # fmt: skip
    return Faces(
        vectors[~probe],
        people[~probe],
        vectors[probe],
        people[probe],
        default_pipeline.normalise(np.array(strangers)),
        thresholds,
    )


def fitted(cls, faces: Faces, rule: str, **options):
    matcher = (
        FaissMatcher(FaissOptions(per_person=rule, **options))
        if cls is FaissMatcher
        else NearestMatcher(NearestOptions(per_person=rule))
    )
    matcher.fit(faces.templates, faces.people)
    return matcher


def assert_same(ours: list[Match], theirs: list[Match]) -> None:
    assert [(m.status, m.person_id, m.candidate_id) for m in ours] == [
        (m.status, m.person_id, m.candidate_id) for m in theirs
    ]
    for a, b in zip(ours, theirs, strict=True):
        assert a.distance == pytest.approx(b.distance, abs=1e-4)
        assert a.margin == pytest.approx(b.margin, abs=1e-4)


def per_face_thresholds(faces: Faces, rule: str, queries: np.ndarray) -> np.ndarray:
    """The calibrated threshold, and every third face a much stricter one."""
    limits = np.full(len(queries), faces.thresholds[rule])
    limits[::3] *= 0.5
    return limits


@pytest.mark.parametrize("rule", RULES)
def test_exact_index_gives_the_nearest_matchers_verdicts(faces, rule):
    queries = np.concatenate([faces.probes, faces.strangers])
    limits = per_face_thresholds(faces, rule, queries)
    ours = fitted(FaissMatcher, faces, rule, index="flat").match(
        queries, threshold=limits, min_margin=MARGIN
    )
    theirs = fitted(NearestMatcher, faces, rule).match(queries, threshold=limits, min_margin=MARGIN)
    assert_same(ours, theirs)
    statuses = [m.status for m in ours]
    assert "match" in statuses and "unknown" in statuses  # the thresholds decide, row by row
    probes = ours[: len(faces.probes)]
    matched = [(m.person_id, p) for m, p in zip(probes, faces.probe_people, strict=True)
               if m.status == "match"]  # fmt: skip
    assert len(matched) >= len(probes) // 2
    assert all(found == truth for found, truth in matched)


@pytest.mark.parametrize("rule", RULES)
def test_strangers_are_unknown(faces, rule):
    matcher = fitted(FaissMatcher, faces, rule)
    matches = matcher.match(faces.strangers, threshold=faces.thresholds[rule], min_margin=MARGIN)
    assert [m.status for m in matches] == ["unknown"] * len(faces.strangers)
    assert all(m.person_id is None and m.candidate_id is not None for m in matches)


@pytest.mark.parametrize("rule", RULES)
def test_too_close_to_two_people_is_ambiguous(faces, rule):
    matcher = fitted(FaissMatcher, faces, rule)
    clear = [
        (probe, m)
        for probe, m in zip(
            faces.probes,
            matcher.match(faces.probes, threshold=faces.thresholds[rule], min_margin=MARGIN),
            strict=True,
        )
        if m.status == "match"
    ]
    probe, match = clear[0]
    (closer,) = matcher.match(
        probe[None], threshold=faces.thresholds[rule], min_margin=match.margin + 1e-3
    )
    assert (closer.status, closer.person_id, closer.candidate_id) == (
        "ambiguous",
        None,
        match.person_id,
    )
    # someone enrolled a second time under another id: a margin of nothing
    twice = faces.people == match.person_id
    matcher.add(faces.templates[twice], np.full(twice.sum(), 999))
    (again,) = matcher.match(probe[None], threshold=faces.thresholds[rule], min_margin=MARGIN)
    assert again.status == "ambiguous" and again.margin == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("rule", RULES)
def test_adding_and_removing_gives_what_a_full_fit_gives(faces, rule, index):
    t, p = faces.templates, faces.people
    gone = np.unique(p)[[2, 7]]
    incremental = FaissMatcher(FaissOptions(per_person=rule, index=index))
    incremental.fit(t[::2], p[::2])  # every person's first half, then the rest in two steps
    half = len(t[1::2]) // 2
    incremental.add(t[1::2][:half], p[1::2][:half])
    incremental.add(t[1::2][half:], p[1::2][half:])
    removed = [incremental.remove(person) for person in gone]
    assert removed == [int((p == person).sum()) for person in gone]
    assert incremental.remove(12345) == 0
    keep = ~np.isin(p, gone)
    full = FaissMatcher(FaissOptions(per_person=rule, index=index))
    full.fit(t[keep], p[keep])
    assert len(incremental) == len(full)
    queries = np.concatenate([faces.probes, faces.strangers])
    limits = per_face_thresholds(faces, rule, queries)
    ours = incremental.match(queries, threshold=limits, min_margin=MARGIN)
    assert_same(ours, full.match(queries, threshold=limits, min_margin=MARGIN))
    assert not {m.candidate_id for m in ours} & set(gone.tolist())


@pytest.mark.parametrize("rule", RULES)
def test_hnsw_agrees_with_exact_search(faces, rule):
    queries = np.concatenate([faces.probes, faces.strangers, faces.templates])
    limits = np.full(len(queries), faces.thresholds[rule])
    hnsw = fitted(FaissMatcher, faces, rule, index="hnsw")
    assert hnsw.kind == "hnsw"
    exact = fitted(FaissMatcher, faces, rule, index="flat")
    assert_same(
        hnsw.match(queries, threshold=limits, min_margin=MARGIN),
        exact.match(queries, threshold=limits, min_margin=MARGIN),
    )


def test_the_search_widens_until_it_finds_another_person(faces):
    # two neighbours at first: mostly both the probe's own person, so the search widens
    narrow = fitted(FaissMatcher, faces, "nearest", index="flat", neighbours=2)
    queries = faces.probes
    assert_same(
        narrow.match(queries, threshold=1.0, min_margin=MARGIN),
        fitted(NearestMatcher, faces, "nearest").match(queries, threshold=1.0, min_margin=MARGIN),
    )


def test_auto_chooses_exact_search_up_to_its_size_and_hnsw_beyond(faces):
    small = fitted(FaissMatcher, faces, "nearest")
    assert small.kind == "flat"
    big = fitted(FaissMatcher, faces, "nearest", auto_above=len(faces.templates) - 1)
    assert big.kind == "hnsw"


def test_nobody_enrolled_means_unknown():
    matcher = FaissMatcher()
    assert [m.status for m in matcher.match(np.ones((2, 128)), threshold=0.6, min_margin=0)] == [
        "unknown",
        "unknown",
    ]
    assert matcher.match(np.zeros((0, 128)), threshold=0.6, min_margin=0) == []
    matcher.add(np.ones((1, 128)), np.array([4]))  # the first template builds the index
    (match,) = matcher.match(np.ones((1, 128)), threshold=0.6, min_margin=0.04)
    assert (match.status, match.person_id, match.margin) == ("match", 4, float("inf"))
    assert matcher.remove(4) == 1
    assert matcher.match(np.ones((1, 128)), threshold=0.6, min_margin=0)[0].status == "unknown"


def test_loading_the_plugins_does_not_import_faiss(pm):
    assert pm.registry.get("matcher", "faiss").cls is FaissMatcher
    code = (
        "import sys\nfrom gate.plugins import make_plugin_manager\n"
        "make_plugin_manager(entry_points=False).registry\nprint('faiss' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

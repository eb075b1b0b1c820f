"""Matcher ``nearest``: the nearest person over everyone enrolled, open-set, with a margin."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from gate import hookimpl
from gate.components import Match, Matcher, StrictOptions
from gate.recognition.calibration import person_means


class NearestOptions(StrictOptions):
    per_person: Literal["mean", "nearest"] = Field(
        "mean",
        description="Score a person by the mean of their templates (separates strangers "
        "better: docs/open-set.md) or by their nearest template.",
    )


class NearestMatcher(Matcher):
    """Distances to all templates in one matrix product; per person, one score.

    A person's score is the distance to the normalised mean of their templates
    (default) or to their nearest template (``per_person = "nearest"``).

    A face matches when its nearest person is within ``threshold`` (one for
    all faces, or one per face) and the
    next-nearest *other* person is at least ``min_margin`` farther; within the
    threshold but without that margin it is ``ambiguous``, otherwise ``unknown``.
    """

    name = "nearest"
    description = "nearest person (mean or nearest template), open-set threshold and margin"
    Options = NearestOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = self.options.per_person
        self.fit(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))

    def fit(self, embeddings: np.ndarray, person_ids: np.ndarray) -> None:
        """Replace the templates at once (safe while other threads match)."""
        order = np.argsort(person_ids, kind="stable")
        templates = np.ascontiguousarray(embeddings[order], dtype=np.float32)
        people, starts = np.unique(np.asarray(person_ids)[order], return_index=True)
        if self.rule == "mean" and len(people):
            templates = person_means(templates, starts).astype(np.float32)
            starts = np.arange(len(people))
        norms = np.einsum("ij,ij->i", templates, templates)
        self._index = (templates, people, starts, norms)

    def match(
        self, embeddings: np.ndarray, *, threshold: float | np.ndarray, min_margin: float
    ) -> list[Match]:
        queries = np.asarray(embeddings, np.float32)
        limits = np.broadcast_to(np.asarray(threshold, np.float64), (len(queries),))
        templates, people, starts, norms = self._index
        if len(queries) == 0:
            return []
        if len(people) == 0:
            return [Match("unknown", None, None, float("inf"), float("inf")) for _ in queries]
        lengths = np.einsum("ij,ij->i", queries, queries)[:, None]
        sq = lengths + norms[None, :] - 2.0 * (queries @ templates.T)
        distances = np.sqrt(np.maximum(sq, 0.0))
        per_person = np.minimum.reduceat(distances, starts, axis=1)
        best = per_person.argmin(axis=1)
        nearest = per_person[np.arange(len(queries)), best]
        if per_person.shape[1] > 1:
            runner_up = np.partition(per_person, 1, axis=1)[:, 1]
        else:
            runner_up = np.full(len(queries), np.inf)
        return decide(people[best], nearest, runner_up, limits, min_margin)


def decide(
    candidates: np.ndarray,
    nearest: np.ndarray,
    runner_up: np.ndarray,
    limits: np.ndarray,
    min_margin: float,
) -> list[Match]:
    """The open-set verdict per face, from its nearest person and the nearest other one.

    ``candidates`` are person ids, ``nearest`` and ``runner_up`` distances (``inf``
    when there is no such person) and ``limits`` the threshold of each face.
    """
    out = []
    for candidate, near, other, limit in zip(candidates, nearest, runner_up, limits, strict=True):
        distance, margin = float(near), float(other - near)
        if distance > limit or not np.isfinite(distance):
            status, person = "unknown", None
        elif margin < min_margin:
            status, person = "ambiguous", None
        else:
            status, person = "match", int(candidate)
        found = int(candidate) if np.isfinite(distance) else None
        out.append(Match(status, person, found, distance, margin))
    return out


@hookimpl
def register_matchers(register):
    register(NearestMatcher)

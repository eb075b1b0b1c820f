"""Matcher ``faiss``: the ``nearest`` contract over a FAISS index, for galleries of millions.

Same verdicts as ``nearest`` (a person scored by the normalised mean of their
templates or by their nearest template; threshold per face or one for all; a
margin to the nearest *other* person; ``match``, ``ambiguous`` or ``unknown``),
but the vectors live once, as float32, inside a FAISS index:

* ``flat``: exact L2 search (``IndexFlatL2`` in an ``IndexIDMap2``);
* ``hnsw``: an approximate graph index (``IndexHNSWFlat`` in an ``IndexIDMap2``):
  about 1.4 ms per face at a million templates on 2 cores, but minutes to build;
* ``ivf``: an approximate inverted file (``IndexIVFFlat``): built in seconds, but on
  real faces it must search many cells to find the nearest person;
* ``auto`` (default): ``flat`` up to ``auto_above`` (50,000) vectors, where exact search
  reaches about 1 ms per face, ``hnsw`` above (``docs/benchmarks.md``, "Gallery scale").

The nearest other person is found among the ``neighbours`` nearest vectors; for
faces whose neighbours are all one person, the search is widened until another
person turns up or the whole index has been searched.

:meth:`FaissMatcher.fit` loads every template at once; :meth:`FaissMatcher.add`
and :meth:`FaissMatcher.remove` change the index in place while doors match.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from gate import hookimpl
from gate.components import Match, Matcher, StrictOptions
from gate_plugins.nearest import decide

#: with ``index = "auto"``: the most vectors searched exactly (see docs/benchmarks.md)
AUTO_ABOVE = 50_000
#: templates summed per chunk when a person's mean is computed (bounds the memory of a fit)
CHUNK = 65_536


class FaissOptions(StrictOptions):
    per_person: Literal["mean", "nearest"] = Field(
        "mean",
        description="Score a person by the normalised mean of their templates or by their "
        "nearest template (as the nearest matcher).",
    )
    index: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto",
        description="Exact search (flat), an approximate index (hnsw, ivf), or flat up to "
        "auto_above vectors and hnsw beyond.",
    )
    auto_above: int = Field(
        AUTO_ABOVE,
        ge=0,
        description="With index = auto: vectors (templates, or people under per_person = mean) "
        "above which hnsw replaces exact search.",
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW: links per vector.")
    ef_construction: int = Field(
        64, ge=8, le=2048, description="HNSW: candidates kept while building."
    )
    ef_search: int = Field(256, ge=8, le=4096, description="HNSW: candidates kept per search.")
    ivf_lists: int = Field(0, ge=0, description="IVF: cells (0: the square root of vectors).")
    ivf_nprobe: int = Field(32, ge=1, le=65_536, description="IVF: cells searched per face.")
    neighbours: int = Field(
        16,
        ge=2,
        le=4096,
        description="Nearest vectors fetched first to find the nearest other person (widened "
        "when they are all one person).",
    )
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="FAISS threads per search (a door asks for one face at a time; more "
        "threads only help batches, and cost much on a busy box).",
    )
    build_threads: int = Field(2, ge=1, le=256, description="FAISS threads building an index.")


def _faiss(threads: int) -> Any:
    """The faiss module (imported on first use: ``gate --help`` never pays for it), set to
    use ``threads`` in the calling thread."""
    import faiss

    faiss.omp_set_num_threads(threads)
    return faiss


@dataclass
class _Gallery:
    """One index and what gate knows of its vectors, by internal id.

    ``owner[i]`` is the person of vector ``i`` (-1 once removed). Under the mean
    rule ``stats[i]`` is ``(templates, sum of their lengths, scale)`` with
    ``vector = sum of templates * scale``, so that a person's mean can be
    updated without keeping their templates. HNSW cannot delete: removed
    vectors stay in its graph (``dead``) until it is rebuilt.
    """

    kind: str
    dim: int
    index: Any | None
    owner: np.ndarray
    stats: np.ndarray
    dead: int = 0

    @property
    def live(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal) - self.dead


def _empty(dim: int = 0) -> _Gallery:
    return _Gallery("", dim, None, np.zeros(0, np.int64), np.zeros((0, 3)))


def _person_sums(
    embeddings: np.ndarray, person_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """People (sorted), and per person the float64 sum of templates, their count and lengths."""
    people, inverse = np.unique(person_ids, return_inverse=True)
    sums = np.zeros((len(people), embeddings.shape[1]))
    lengths = np.zeros(len(people))
    order = np.argsort(inverse, kind="stable")
    for begin in range(0, len(order), CHUNK):
        rows = order[begin : begin + CHUNK]
        who = inverse[rows]
        starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
        chunk = embeddings[rows].astype(np.float64)
        sums[who[starts]] += np.add.reduceat(chunk, starts, axis=0)
        lengths[who[starts]] += np.add.reduceat(np.sqrt((chunk**2).sum(axis=1)), starts)
    counts = np.bincount(inverse, minlength=len(people)).astype(np.float64)
    return people, sums, counts, lengths


def _means(
    sums: np.ndarray, counts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised means (float32) and the stats rows ``(count, lengths, scale)`` behind them.

    As :func:`gate.recognition.calibration.person_means`: the mean direction at
    the mean length of the person's templates.
    """
    scale = (lengths / counts) / np.maximum(np.linalg.norm(sums, axis=1), 1e-12)
    vectors = (sums * scale[:, None]).astype(np.float32)
    return vectors, np.stack([counts, lengths, scale], axis=1)


class FaissMatcher(Matcher):
    """The open-set nearest person over a FAISS index, updated in place.

    Safe to use from several threads: searches and changes take one lock;
    :meth:`fit` builds the new index outside it and swaps it in.
    """

    name = "faiss"
    description = "nearest person over a FAISS index (exact, HNSW or IVF), for large galleries"
    Options = FaissOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = self.options.per_person
        self._lock = threading.Lock()
        self._gallery = _empty()

    @property
    def kind(self) -> str:
        """The index in use: ``flat``, ``hnsw`` or ``ivf`` (empty before any template)."""
        return self._gallery.kind

    def __len__(self) -> int:
        """Vectors searched: templates, or people under the mean rule."""
        return self._gallery.live

    def fit(self, embeddings: np.ndarray, person_ids: np.ndarray) -> None:
        """Replace every template at once; the index kind is chosen here (``auto``)."""
        gallery = self._load(np.asarray(embeddings, np.float32), np.asarray(person_ids, np.int64))
        with self._lock:
            self._gallery = gallery

    def add(self, embeddings: np.ndarray, person_ids: np.ndarray) -> None:
        """Add templates (of new people or of people already enrolled) without a rebuild.

        Under the mean rule each person named gets their mean updated. The index
        kind stays as :meth:`fit` chose it (``auto`` chooses again at the next fit).
        """
        embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
        person_ids = np.atleast_1d(np.asarray(person_ids, np.int64))
        if len(embeddings) != len(person_ids):
            raise ValueError(f"{len(embeddings)} templates but {len(person_ids)} person ids")
        if len(embeddings) == 0:
            return
        with self._lock:
            gallery = self._gallery
            if gallery.index is None:
                self._gallery = self._load(embeddings, person_ids)
                return
            if embeddings.shape[1] != gallery.dim:
                raise ValueError(
                    f"templates have {embeddings.shape[1]} dimensions, not {gallery.dim}"
                )
            if self.rule == "nearest":
                vectors, owners, stats = embeddings, person_ids, gallery.stats
            else:
                people, sums, counts, lengths = _person_sums(embeddings, person_ids)
                old = np.flatnonzero(np.isin(gallery.owner, people))
                if len(old):
                    where = np.searchsorted(people, gallery.owner[old])
                    count, length, scale = gallery.stats[old].T
                    previous = gallery.index.reconstruct_batch(old).astype(np.float64)
                    safe = np.where(scale > 0, scale, 1.0)
                    sums[where] += np.where(scale[:, None] > 0, previous / safe[:, None], 0.0)
                    counts[where] += count
                    lengths[where] += length
                    self._drop(gallery, old)
                vectors, rows = _means(sums, counts, lengths)
                owners, stats = people, np.concatenate([gallery.stats, rows])
            ids = np.arange(len(gallery.owner), len(gallery.owner) + len(vectors), dtype=np.int64)
            gallery.index.add_with_ids(vectors, ids)
            gallery.owner = np.concatenate([gallery.owner, owners])
            gallery.stats = stats
            self._compact(gallery)

    def remove(self, person_id: int) -> int:
        """Forget a person's templates without a rebuild; returns how many there were.

        HNSW cannot delete: their vectors are left out of every answer, and the graph
        is rebuilt once removed vectors are a quarter of it.
        """
        with self._lock:
            gallery = self._gallery
            ids = np.flatnonzero(gallery.owner == person_id)
            if len(ids) == 0:
                return 0
            removed = len(ids) if self.rule == "nearest" else int(gallery.stats[ids, 0].sum())
            self._drop(gallery, ids)
            self._compact(gallery)
            return removed

    def state(self) -> dict[str, np.ndarray] | None:
        """The built index and what gate knows of it, as arrays (None when empty): what
        :meth:`restore` takes back, so that a large gallery need not be built again."""
        with self._lock:
            gallery = self._gallery
            if gallery.index is None:
                return None
            return {
                "index": _faiss(1).serialize_index(gallery.index),
                "kind": np.array(gallery.kind),
                "dim": np.array(gallery.dim),
                "owner": gallery.owner.copy(),
                "stats": gallery.stats.copy(),
                "dead": np.array(gallery.dead),
            }

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take back what :meth:`state` gave, with this matcher's search settings."""
        faiss = _faiss(self.options.threads)
        index = faiss.deserialize_index(np.asarray(state["index"], np.uint8))
        kind = str(state["kind"])
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.options.ef_search
        elif kind == "ivf":
            index.nprobe = self.options.ivf_nprobe
        gallery = _Gallery(
            kind, int(state["dim"]), index, np.asarray(state["owner"], np.int64).copy(),
            np.asarray(state["stats"], np.float64).copy(), int(state["dead"]),
        )  # fmt: skip
        with self._lock:
            self._gallery = gallery

    def match(
        self, embeddings: np.ndarray, *, threshold: float | np.ndarray, min_margin: float
    ) -> list[Match]:
        queries = np.ascontiguousarray(np.atleast_2d(embeddings), np.float32)
        limits = np.broadcast_to(np.asarray(threshold, np.float64), (len(queries),))
        if len(queries) == 0:
            return []
        with self._lock:
            gallery = self._gallery
            if gallery.live == 0:
                return [Match("unknown", None, None, float("inf"), float("inf")) for _ in queries]
            _faiss(self.options.threads)
            people, nearest, runner_up = self._search(gallery, queries)
        return decide(people, np.sqrt(nearest), np.sqrt(runner_up), limits, min_margin)

    def _search(
        self, gallery: _Gallery, queries: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per face: the nearest person, the squared distance to them and to the next person."""
        total = int(gallery.index.ntotal)
        k = min(self.options.neighbours, total)
        people = np.full(len(queries), -1, np.int64)
        nearest = np.full(len(queries), np.inf)
        runner_up = np.full(len(queries), np.inf)
        todo = np.arange(len(queries))
        while len(todo):
            distances, ids = gallery.index.search(queries[todo], k)
            who = np.where(ids >= 0, gallery.owner[np.maximum(ids, 0)], -1)
            rows = np.arange(len(todo))
            found = who >= 0
            first = found.argmax(axis=1)
            person = who[rows, first]
            other = found & (who != person[:, None])
            second = other.argmax(axis=1)
            has_one, has_two = found.any(axis=1), other.any(axis=1)
            people[todo] = person
            nearest[todo] = np.where(has_one, distances[rows, first], np.inf)
            runner_up[todo] = np.where(has_two, distances[rows, second], np.inf)
            if k >= total:
                break
            todo = todo[~has_two]
            k = min(2 * k, total)
        return people, np.maximum(nearest, 0.0), np.maximum(runner_up, 0.0)

    def _load(self, embeddings: np.ndarray, person_ids: np.ndarray) -> _Gallery:
        """A new gallery holding these templates."""
        if len(embeddings) != len(person_ids):
            raise ValueError(f"{len(embeddings)} templates but {len(person_ids)} person ids")
        dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
        if len(embeddings) == 0:
            return _empty(dim)
        if self.rule == "nearest":
            vectors, owner, stats = embeddings, person_ids, np.zeros((0, 3))
        else:
            owner, sums, counts, lengths = _person_sums(embeddings, person_ids)
            vectors, stats = _means(sums, counts, lengths)
        kind = self.options.index
        if kind == "auto":
            kind = "flat" if len(vectors) <= self.options.auto_above else "hnsw"
        index = self._build(kind, vectors)
        return _Gallery(kind, dim, index, owner.astype(np.int64, copy=True), stats)

    def _build(self, kind: str, vectors: np.ndarray, ids: np.ndarray | None = None) -> Any:
        """An index of ``kind`` holding ``vectors`` under ``ids`` (default ``0..n-1``)."""
        faiss = _faiss(self.options.build_threads)
        o = self.options
        n, dim = vectors.shape
        vectors = np.ascontiguousarray(vectors, np.float32)
        ids = np.arange(n, dtype=np.int64) if ids is None else ids
        if kind == "ivf":
            lists = o.ivf_lists or round(math.sqrt(n))
            lists = max(1, min(lists, n // 39))  # faiss wants 39 training points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
            sample = np.random.default_rng(0).permutation(n)[: 64 * lists]
            index.train(vectors[np.sort(sample)])
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.nprobe = o.ivf_nprobe
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, o.hnsw_m)
            inner.hnsw.efConstruction = o.ef_construction
            inner.hnsw.efSearch = o.ef_search
            index = faiss.IndexIDMap2(inner)
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        index.add_with_ids(vectors, ids)
        return index

    def _drop(self, gallery: _Gallery, ids: np.ndarray) -> None:
        """Take vectors out of the search (HNSW: out of the answers; its graph keeps them)."""
        if gallery.kind == "hnsw":
            gallery.dead += len(ids)
        else:
            gallery.index.remove_ids(np.asarray(ids, np.int64))
        gallery.owner[ids] = -1

    def _compact(self, gallery: _Gallery) -> None:
        """Rebuild an HNSW graph once a quarter of it is removed vectors."""
        if gallery.kind != "hnsw" or 4 * gallery.dead <= gallery.index.ntotal:
            return
        ids = np.flatnonzero(gallery.owner >= 0).astype(np.int64)
        if len(ids):
            gallery.index = self._build("hnsw", gallery.index.reconstruct_batch(ids), ids)
        else:
            gallery.index, gallery.kind = None, ""
        gallery.dead = 0


@hookimpl
def register_matchers(register):
    register(FaissMatcher)

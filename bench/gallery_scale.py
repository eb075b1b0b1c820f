"""Matching at gallery scale: ``nearest`` and the ``faiss`` indexes at 10k, 100k and 1M templates.

For every size and matcher, in a fresh process (so that memory is its own):

* start-up: the time of ``fit`` over every template (building the index);
* memory: resident memory added by ``fit`` (RSS after minus before) and its peak
  (faiss itself is imported before counting);
* latency per face: one face per call, as the door loop asks (median and p90 over
  ``--queries`` faces, half of them enrolled people, half strangers), and per face in
  batches of ``--batch``;
* for the approximate indexes: recall of the true nearest person (what exact search
  names), on probes of enrolled people and on strangers.

The templates are synthetic: people on a sphere of the pipeline's radius (1.414), spread
as real faces are (strangers about 0.8 apart, photos of one person about 0.3), several
templates each. Recall (and speed) is also measured on real embeddings: every face of
the shared sets under every image condition of ``bench/embed_sets.py`` (its cache), with
some people held out as strangers and one photo of each other person held out as a probe;
and again with the enrolled templates grown to ``--real-scale`` by shifted copies of the
real people (each copy a new person with a real person's spread of photos).

Examples::

    python bench/gallery_scale.py                             # 10k, 100k, 1M; every matcher
    python bench/gallery_scale.py --sizes 10000 --matchers nearest,flat --no-real
    python bench/gallery_scale.py --ef-search 128 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

DIM = 128
#: the radius the default pipeline scales embeddings to (its impostor model's)
RADIUS = 1.414
#: spread of people around the gallery's centre and of photos around a person, per
#: dimension, on the unit sphere: people about 0.57 * RADIUS = 0.8 apart, photos of one
#: person about 0.23 * RADIUS = 0.33 (dlib-torch on the shared sets: impostor pairs
#: median 0.84, genuine pairs median 0.29)
SPREAD, NOISE = 0.44, 0.167
THRESHOLD, MARGIN = 0.45, 0.04
MATCHERS = ("nearest", "flat", "hnsw", "ivf")


def on_sphere(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= RADIUS
    return x


def around(centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """A point near each of ``centres`` (unit-sphere spread per dimension), on the sphere."""
    x = rng.standard_normal(centres.shape, dtype=np.float32)
    x *= spread * RADIUS / np.sqrt(DIM)
    x += centres
    return on_sphere(x)


def synthetic(
    templates: int, per_person: int, seed: int, strangers: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Templates, their person ids, and the centres of the people then of ``strangers`` more."""
    rng = np.random.default_rng(seed)
    people = -(-templates // per_person)
    middle = on_sphere(rng.standard_normal((1, DIM), dtype=np.float32))
    centres = around(np.repeat(middle, people + strangers, axis=0), SPREAD, rng)
    ids = np.repeat(np.arange(people, dtype=np.int64), per_person)[:templates]
    embeddings = around(centres[ids], NOISE, rng)
    return embeddings, ids, centres


def rss_mb() -> float:
    """Resident memory of this process, MB (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        return _status("VmRSS")
    return psutil.Process().memory_info().rss / 2**20


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start counting peak memory (VmHWM) from now (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def make_matcher(kind: str, job: dict):
    from gate_plugins.faiss_matcher import FaissMatcher, FaissOptions
    from gate_plugins.nearest import NearestMatcher, NearestOptions

    if kind == "nearest":
        return NearestMatcher(NearestOptions(per_person=job["rule"]))
    return FaissMatcher(FaissOptions(per_person=job["rule"], index=kind, **job["options"]))


def recall(found: list, truth: list) -> float:
    """Share of faces for which both name the same nearest person."""
    same = [a.candidate_id == b.candidate_id for a, b in zip(found, truth, strict=True)]
    return float(np.mean(same))


def agreement(found: list, truth: list) -> float:
    """Share of faces given the same verdict (status and person) at THRESHOLD and MARGIN."""
    pairs = zip(found, truth, strict=True)
    return float(np.mean([(a.status, a.person_id) == (b.status, b.person_id) for a, b in pairs]))


def run_synthetic(job: dict) -> dict:
    """One matcher at one size: start-up, memory, latency, recall (run in its own process)."""
    count = max(job["queries"], job["recall_queries"])
    embeddings, ids, centres = synthetic(job["templates"], job["per_person"], job["seed"], count)
    rng = np.random.default_rng(job["seed"] + 1)
    people = len(centres) - count
    enrolled = around(centres[rng.integers(0, people, count)], NOISE, rng)
    strangers = around(centres[people:], NOISE, rng)
    del centres
    matcher = make_matcher(job["matcher"], job)
    if job["matcher"] != "nearest":
        import faiss  # noqa: F401  (its code is not the templates: loaded before counting)
    gc.collect()
    reset_peak()
    before = rss_mb()
    started = time.perf_counter()
    matcher.fit(embeddings, ids)
    build = time.perf_counter() - started
    added, peak = rss_mb() - before, _status("VmHWM") - before

    half = job["queries"] // 2
    faces = np.concatenate([enrolled[:half], strangers[: job["queries"] - half]])
    matcher.match(faces[:1], threshold=THRESHOLD, min_margin=MARGIN)
    times = []
    for face in faces:
        started = time.perf_counter()
        matcher.match(face[None], threshold=THRESHOLD, min_margin=MARGIN)
        times.append(time.perf_counter() - started)
    out = {
        **{k: job[k] for k in ("matcher", "templates", "rule", "per_person")},
        "kind": getattr(matcher, "kind", "exact"),
        "vectors": len(matcher) if hasattr(matcher, "__len__") else None,
        "build_s": build,
        "rss_added_mb": added,
        "peak_added_mb": peak,
        "ms_median": 1e3 * float(np.median(times)),
        "ms_p90": 1e3 * float(np.percentile(times, 90)),
    }
    if job["batch"] > 1:
        started = time.perf_counter()
        for i in range(0, len(faces), job["batch"]):
            matcher.match(faces[i : i + job["batch"]], threshold=THRESHOLD, min_margin=MARGIN)
        out["ms_per_face_batched"] = 1e3 * (time.perf_counter() - started) / len(faces)
    if job["matcher"] in ("hnsw", "ivf"):
        probes = (enrolled[: job["recall_queries"]], strangers[: job["recall_queries"]])
        found = [matcher.match(q, threshold=THRESHOLD, min_margin=MARGIN) for q in probes]
        del matcher
        gc.collect()
        exact = make_matcher("flat", job)
        exact.fit(embeddings, ids)
        truth = [exact.match(q, threshold=THRESHOLD, min_margin=MARGIN) for q in probes]
        out["recall_enrolled"] = recall(found[0], truth[0])
        out["recall_strangers"] = recall(found[1], truth[1])
        out["same_verdict"] = agreement(found[0] + found[1], truth[0] + truth[1])
    return out


def load_real(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cached embedding (normalised as the pipeline does), its person and its photo."""
    from gate.config import parse_config
    from gate.plugins import make_plugin_manager
    from gate.recognition.pipeline import Pipeline

    files = sorted(cache.glob("*.npz"))
    if not files:
        raise SystemExit(f"no embeddings under {cache}: run bench/embed_sets.py first")
    vectors, labels, photos = [], [], []
    for path in files:
        data = np.load(path)
        vectors.append(data["embedding"])
        labels += [f"{path.name.split('-')[0]}:{label}" for label in data["label"]]
        photos += list(data["path"])
    pipeline = Pipeline(parse_config({}), make_plugin_manager(entry_points=False).registry)
    embeddings = pipeline.normalise(np.concatenate(vectors))
    _, people = np.unique(labels, return_inverse=True)
    _, photo = np.unique(photos, return_inverse=True)
    return embeddings, people.astype(np.int64), photo


def grown(
    embeddings: np.ndarray, people: np.ndarray, target: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Real templates and shifted copies of them, up to ``target`` templates.

    A copy of a person moves all their photos by one random offset, 0.55 to 0.9 long (as
    far as close strangers are): a new person with a real person's spread of photos.
    """
    rng = np.random.default_rng(seed)
    span = int(people.max()) + 1
    parts, ids = [embeddings], [people]
    for copy in range(1, max(1, target // len(embeddings))):
        offsets = rng.standard_normal((span, DIM), dtype=np.float32)
        offsets *= (rng.uniform(0.55, 0.9, span) / np.linalg.norm(offsets, axis=1))[:, None]
        parts.append(on_sphere(embeddings + offsets[people]))
        ids.append(people + copy * span)
    return np.concatenate(parts), np.concatenate(ids)


def run_real(job: dict) -> dict:
    """Recall (and speed) of the approximate indexes against exact search, on real faces.

    With ``job["scale"]`` the enrolled templates are grown by :func:`grown` to that many.
    """
    embeddings, people, photo = load_real(Path(job["cache"]))
    rng = np.random.default_rng(job["seed"])
    names = np.unique(people)
    strangers = np.isin(people, rng.choice(names, len(names) // 10, replace=False))
    # one photo (under every condition) of each other person with two photos or more
    held = np.zeros(len(people), bool)
    for person in names:
        shots = np.unique(photo[(people == person) & ~strangers])
        if len(shots) >= 2:
            held |= photo == rng.choice(shots)
    enrolled = ~strangers & ~held
    templates, ids = embeddings[enrolled], people[enrolled]
    if job["scale"]:
        templates, ids = grown(templates, ids, job["scale"], job["seed"])
    probes = (embeddings[held], embeddings[strangers])
    out = {
        "embeddings": len(people),
        "people": len(names),
        "templates": len(templates),
        "probes": len(probes[0]),
        "stranger_probes": len(probes[1]),
        "rows": [],
    }
    for rule in job["rules"]:
        exact = make_matcher("flat", {**job, "rule": rule})
        exact.fit(templates, ids)
        truth = [exact.match(q, threshold=THRESHOLD, min_margin=MARGIN) for q in probes]
        del exact
        for kind in job["kinds"]:
            matcher = make_matcher(kind, {**job, "rule": rule})
            started = time.perf_counter()
            matcher.fit(templates, ids)
            build = time.perf_counter() - started
            times = []
            for face in probes[0][: job["queries"]]:
                started = time.perf_counter()
                matcher.match(face[None], threshold=THRESHOLD, min_margin=MARGIN)
                times.append(time.perf_counter() - started)
            found = [matcher.match(q, threshold=THRESHOLD, min_margin=MARGIN) for q in probes]
            del matcher
            out["rows"].append(
                {
                    "rule": rule,
                    "kind": kind,
                    "vectors": len(np.unique(ids)) if rule == "mean" else len(ids),
                    "build_s": build,
                    "ms_median": 1e3 * float(np.median(times)),
                    "recall_enrolled": recall(found[0], truth[0]),
                    "recall_strangers": recall(found[1], truth[1]),
                    "same_verdict": agreement(found[0] + found[1], truth[0] + truth[1]),
                }
            )
    return out


def child(job: dict) -> dict:
    """Run ``job`` in a fresh interpreter; its result is the last line it prints."""
    result = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(job)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="templates, comma-separated")
    p.add_argument("--matchers", default=",".join(MATCHERS), help="nearest, flat, hnsw, ivf")
    p.add_argument(
        "--per-person",
        dest="rule",
        choices=("nearest", "mean"),
        default="nearest",
        help="how a person is scored (nearest: every template is searched)",
    )
    p.add_argument("--templates-per-person", type=int, default=5)
    p.add_argument("--queries", type=int, default=200, help="faces timed one at a time")
    p.add_argument("--batch", type=int, default=16, help="faces per call, batched (1: skip)")
    p.add_argument("--recall-queries", type=int, default=1000, help="of each kind")
    p.add_argument("--hnsw-m", type=int, default=None)
    p.add_argument("--ef-construction", type=int, default=None)
    p.add_argument("--ef-search", type=int, default=None)
    p.add_argument("--ivf-lists", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="faiss threads (matcher default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--real",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recall on the cached real embeddings too",
    )
    p.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    p.add_argument(
        "--real-scale",
        default="1000000",
        help="also grow the real templates to these sizes (comma-separated; empty: no)",
    )
    p.add_argument("--json", type=Path, help="write every number here too")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        print(json.dumps(run_real(job) if job.get("real") else run_synthetic(job)), flush=True)
        return

    names = {
        "hnsw_m": args.hnsw_m,
        "ef_construction": args.ef_construction,
        "ef_search": args.ef_search,
        "ivf_lists": args.ivf_lists,
        "ivf_nprobe": args.nprobe,
        "threads": args.threads,
    }
    options = {k: v for k, v in names.items() if v is not None}
    from gate_plugins.faiss_matcher import FaissOptions

    settings = FaissOptions(**options)
    base = {
        "rule": args.rule,
        "per_person": args.templates_per_person,
        "options": options,
        "queries": args.queries,
        "batch": args.batch,
        "recall_queries": args.recall_queries,
        "seed": args.seed,
    }
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"faiss threads {settings.threads}; per_person = {args.rule}, "
        f"{args.templates_per_person} templates per person; HNSW M={settings.hnsw_m} "
        f"efConstruction={settings.ef_construction} efSearch={settings.ef_search}; IVF "
        f"lists={settings.ivf_lists or 'sqrt(n)'} nprobe={settings.ivf_nprobe}\n",
        flush=True,
    )
    rows = []
    print(
        "| templates | matcher | build s | MB added | peak MB | ms/face median | ms/face p90 "
        "| ms/face batched | recall enrolled | recall strangers | same verdict |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        for matcher in args.matchers.split(","):
            row = child({**base, "matcher": matcher, "templates": size})
            rows.append(row)
            label = "nearest" if matcher == "nearest" else f"faiss {matcher}"
            print(
                f"| {size:,} | {label} | {fmt(row['build_s'], 1)} | "
                f"{row['rss_added_mb']:.0f} | {row['peak_added_mb']:.0f} | "
                f"{fmt(row['ms_median'], 3)} | {fmt(row['ms_p90'], 3)} | "
                f"{fmt(row.get('ms_per_face_batched'), 3)} | "
                f"{fmt(row.get('recall_enrolled'), 4)} | "
                f"{fmt(row.get('recall_strangers'), 4)} | {fmt(row.get('same_verdict'), 4)} |",
                flush=True,
            )
    real = []
    scales = [int(n) for n in f"0,{args.real_scale}".split(",") if n.strip()] if args.real else []
    for scale in scales:
        rules = ["nearest", "mean"] if scale == 0 else ["nearest"]
        kinds = [k for k in args.matchers.split(",") if k in ("hnsw", "ivf")] or ["hnsw", "ivf"]
        job = {**base, "real": True, "cache": str(args.cache), "scale": scale}
        job |= {"rules": rules, "kinds": kinds}
        found = child(job)
        real.append(found)
        if scale == 0:
            print(
                f"\nReal embeddings: {found['embeddings']:,} faces of {found['people']:,} people "
                f"(every shared set, every image condition); {found['templates']:,} enrolled, "
                f"{found['probes']:,} probes of enrolled people, {found['stranger_probes']:,} "
                "of strangers\n"
            )
            print(
                "| templates | per_person | index | vectors | build s | ms/face median "
                "| recall enrolled | recall strangers | same verdict |"
            )
            print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
        for row in found["rows"]:
            print(
                f"| {found['templates']:,} | {row['rule']} | {row['kind']} | "
                f"{row['vectors']:,} | {row['build_s']:.1f} | {row['ms_median']:.3f} | "
                f"{row['recall_enrolled']:.4f} | {row['recall_strangers']:.4f} | "
                f"{row['same_verdict']:.4f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": vars(args) | {"json": str(args.json), "cache": str(args.cache)},
                    "synthetic": rows,
                    "real": real,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

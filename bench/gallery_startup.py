"""Start-up of a large gallery: templates read from SQLite, the index built (first start) or read
back from the cache beside the database (every start after), with the default pipeline.

    python bench/gallery_startup.py --templates 1000000 [--per-person 5] [--matcher faiss]

Synthetic 128-d templates (5 per person by default) are written into a fresh gate database
in a temporary folder; the figures are wall-clock seconds of one run each, and the process's
peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.pipeline import Pipeline
from gate.storage.database import GateDB

NOW = "2026-01-01T00:00:00.000Z"


def make_gallery(path: Path, templates: int, per_person: int, space: str) -> None:
    """A gate database holding ``templates`` random unit templates of ``space``."""
    GateDB(path).close()
    con = sqlite3.connect(path)
    people = -(-templates // per_person)
    con.executemany(
        "insert into people (id, name, created_at) values (?, ?, ?)",
        ((i + 1, f"p{i}", NOW) for i in range(people)),
    )
    rng = np.random.default_rng(0)

    def rows():
        for start in range(0, templates, 50_000):
            x = rng.standard_normal((min(50_000, templates - start), 128)).astype("<f4")
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            for k, vector in enumerate(x):
                i = start + k
                yield (i // per_person + 1, "bench", "1", space, 128, vector.tobytes(),
                       f"{i:064x}", NOW)  # fmt: skip

    con.executemany(
        "insert into templates (person_id, encoder, encoder_version, space, dim, embedding, "
        "source_sha256, created_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    con.commit()
    con.close()


def start(db_path: Path, matcher: str) -> dict:
    """One start of the pipeline on this database: seconds for each part."""
    config = parse_config({"pipeline": {"matcher": matcher, "actuators": ["log"]}})
    pipeline = Pipeline(config, make_plugin_manager(entry_points=False).registry)
    db = GateDB(db_path)
    begin = time.perf_counter()
    _ = pipeline.encoder, pipeline.matcher
    models = time.perf_counter() - begin
    begin = time.perf_counter()
    held = pipeline.load_templates(db)
    loaded = time.perf_counter() - begin
    pipeline.caps_ready.wait()  # look-alike caps (in the background for a large gallery)
    caps = time.perf_counter() - begin
    pipeline.close()
    db.close()
    return {
        "templates": held,
        "models_s": round(models, 2),
        "load_templates_s": round(loaded, 2),
        "caps_ready_s": round(caps, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--templates", type=int, default=1_000_000)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--matcher", default="faiss")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gate-startup-") as tmp:
        db_path = Path(tmp) / "gate.db"
        config = parse_config({"pipeline": {"actuators": ["log"]}})
        space = Pipeline(config, make_plugin_manager(entry_points=False).registry).encoder.space
        begin = time.perf_counter()
        make_gallery(db_path, args.templates, args.per_person, space)
        made = time.perf_counter() - begin
        first = start(db_path, args.matcher)
        cache = sum(p.stat().st_size for p in (Path(tmp) / "index-cache").glob("*.npz"))
        second = start(db_path, args.matcher)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "templates": args.templates,
        "per_person": args.per_person,
        "matcher": args.matcher,
        "database_written_s": round(made, 1),
        "first_start": first,
        "index_cache_mb": round(cache / 2**20, 1),
        "next_start": second,
        "peak_rss_mb": round(peak),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.templates:,} templates, {args.per_person} per person, matcher {args.matcher}")
    print(f"first start (read + build + keep): {first['load_templates_s']} s, "
          f"look-alike caps in force after {first['caps_ready_s']} s")  # fmt: skip
    print(f"index kept: {result['index_cache_mb']} MB")
    print(f"next start (read back): {second['load_templates_s']} s, "
          f"look-alike caps in force after {second['caps_ready_s']} s")  # fmt: skip
    print(f"peak memory: {result['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()

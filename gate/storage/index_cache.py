"""The matcher's built index, kept beside the database so that a large gallery starts in seconds.

Building an HNSW graph over a million templates takes minutes; reading it back takes
seconds. A cache file is used only when it was made for the same embedding space, matcher,
options and scale, and only up to the templates it holds: what was enrolled since is added
on top, and anything else (a person removed, templates re-encoded) rebuilds it. It holds
face embeddings, so it is private to its owner like the database, and removing anyone from
the database deletes it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("gate.index_cache")

FOLDER = "index-cache"


def cache_path(db_path: Path, space: str, matcher: str) -> Path:
    """Where the index of ``matcher`` over ``space`` is kept, beside the database."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{space}-{matcher}")
    return Path(db_path).parent / FOLDER / f"{name}.npz"


def save(path: Path, key: dict[str, Any], state: dict[str, np.ndarray]) -> None:
    """Write ``state`` under ``key`` (JSON-able) atomically, owner-only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.frombuffer(json.dumps(key, sort_keys=True).encode(), np.uint8), **state)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(buffer.getbuffer())
    os.replace(partial, path)


def load(path: Path, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The state kept under exactly ``key``; None when there is none or it is for another."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = json.loads(bytes(data["key"]).decode())
            if stored != key:
                return None
            return {name: data[name] for name in data.files if name != "key"}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("index cache %s unreadable, rebuilding: %s", path, exc)
        return None


def drop_all(db_path: Path) -> None:
    """Delete every index kept beside this database (someone was removed from it)."""
    folder = Path(db_path).parent / FOLDER
    for each in folder.glob("*.npz") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            each.unlink()

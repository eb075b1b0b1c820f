"""The log as pictures and pages: ``gate log --snapshots`` and ``gate log --browse``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from gate.storage.events import AccessEvent

#: The datasette metadata and plugin shipped with gate (``gate/storage/datasette/``).
DATASETTE_FILES = Path(__file__).with_name("datasette")
INSTALL_HINT = "pip install 'gate-access[browse]' (or: pip install datasette)"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _safe(text: str, most: int = 40) -> str:
    """A file-name part: letters, digits, ``-`` and ``_`` only, never empty."""
    return _UNSAFE.sub("_", text).strip("_")[:most] or "_"


def snapshot_name(event: AccessEvent) -> str:
    """``<id>-<time>-<door>-<decision>-<person or unknown>`` plus the image's suffix."""
    when = event.time.replace("-", "").replace(":", "").replace(".", "")
    suffix = ".png" if (event.snapshot or b"").startswith(b"\x89PNG") else ".jpg"
    parts = [str(event.id), when, event.door, event.decision, event.person or "unknown"]
    return "-".join(_safe(p) for p in parts) + suffix


@dataclass
class Written:
    """What ``--snapshots`` did: the files written and the events without a snapshot."""

    files: list[Path] = field(default_factory=list)
    without: list[int] = field(default_factory=list)


def write_snapshots(events: Iterable[AccessEvent], folder: Path) -> Written:
    """Write each event's stored face crop into ``folder`` (made private if new)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = Written()
    for event in events:
        if not event.snapshot:
            done.without.append(event.id)
            continue
        path = folder / snapshot_name(event)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # faces: private
        with os.fdopen(fd, "wb") as out:
            out.write(event.snapshot)
        done.files.append(path)
    return done


def datasette_installed() -> bool:
    """Whether datasette can be run from this Python."""
    return importlib.util.find_spec("datasette") is not None


def datasette_metadata(db_path: Path) -> dict:
    """The shipped metadata, keyed by the name datasette gives ``db_path`` (its stem)."""
    data = json.loads((DATASETTE_FILES / "metadata.json").read_text())
    data["databases"] = {db_path.stem: data["databases"]["gate"]}
    return data


def datasette_command(db_path: Path, metadata: Path, port: int) -> list[str]:
    """The command that serves ``db_path`` read-only on 127.0.0.1.

    Not ``--immutable``: gate run may be writing, and an immutable database is
    assumed never to change. A mutable one is read with ``mode=ro``; no plugin
    that writes is loaded, custom SQL and whole-database downloads are off.
    """
    return [
        sys.executable, "-m", "datasette", "serve", str(db_path),
        "--host", "127.0.0.1", "--port", str(port),
        "--metadata", str(metadata),
        "--plugins-dir", str(DATASETTE_FILES),
        "--setting", "allow_download", "off",
        "--setting", "default_page_size", "50",
    ]  # fmt: skip


def events_url(port: int, db_path: Path, filters: dict[str, str | None]) -> str:
    """The events page for ``gate log``'s filters (door, person, decision, reason, node)."""
    query = {k: v for k, v in filters.items() if v is not None}
    return f"http://127.0.0.1:{port}/{db_path.stem}/events" + (
        f"?{urlencode(query)}" if query else ""
    )


def serve(db_path: Path, port: int, url: str, echo) -> int:
    """Run datasette on ``db_path`` until it stops (Ctrl-C); returns its exit status."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gate-browse-") as tmp:
        metadata = Path(tmp) / "metadata.json"
        metadata.write_text(json.dumps(datasette_metadata(db_path)))
        echo(f"the log, read-only: {url}  (Ctrl-C to stop)")
        try:
            return subprocess.run(
                datasette_command(db_path, metadata, port), check=False
            ).returncode
        except KeyboardInterrupt:
            return 0

"""Retention: the log forgets snapshots and events on time (``[retention]``).

Applied by ``gate log purge`` and, while ``gate run`` runs, at start and then
hourly. Deleting old events moves the hash chain's anchor, so the rest of the
log still verifies.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gate.config import RetentionConfig
from gate.storage.database import GateDB
from gate.storage.events import utc_iso

logger = logging.getLogger("gate.retention")

DAY_S = 86400.0


@dataclass
class Purged:
    """What one pass of retention removed."""

    stranger_snapshots: int = 0
    snapshots: int = 0
    events: int = 0

    def __str__(self) -> str:
        return (
            f"{self.events} event(s), {self.snapshots} snapshot(s) and "
            f"{self.stranger_snapshots} stranger snapshot(s) older than kept"
        )


def purge(db: GateDB, retention: RetentionConfig, now: float | None = None) -> Purged:
    """Apply ``retention`` as of ``now`` (epoch seconds; default: now)."""
    now = time.time() if now is None else now
    done = Purged()
    if retention.events_days:
        done.events = db.purge_events(utc_iso(now - retention.events_days * DAY_S))
    if retention.snapshots_days:
        done.snapshots = db.drop_snapshots(utc_iso(now - retention.snapshots_days * DAY_S))
    if retention.stranger_snapshots_days:
        before = utc_iso(now - retention.stranger_snapshots_days * DAY_S)
        done.stranger_snapshots = db.drop_snapshots(before, strangers_only=True)
    return done


def keep_purging(
    db_path: Path, retention: RetentionConfig, stop: threading.Event, every_s: float = 3600.0
) -> threading.Thread:
    """Apply retention now and every ``every_s`` until ``stop`` is set, in a thread of its own."""

    def work() -> None:
        while True:
            try:
                db = GateDB(db_path)
                try:
                    done = purge(db, retention)
                finally:
                    db.close()
                if done.events or done.snapshots or done.stranger_snapshots:
                    logger.info("retention purged %s", done)
            except Exception:  # a failing purge must not stop the doors; it is tried again
                logger.exception("retention failed")
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=work, name="gate-retention", daemon=True)
    thread.start()
    return thread

"""Doors as a run sees them: the database's settings over the config's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from gate.config import DecisionConfig, GateConfig
from gate.errors import ConfigError, StoreError
from gate.policy.access import DoorInfo
from gate.storage.database import GateDB, check_name

DIRECTIONS = ("in", "out")
#: door columns that override a ``[decision]`` setting of the same name
DECISION_KEYS = ("confirm_frames", "window_frames", "cooldown_s")


@dataclass(frozen=True)
class DoorSpec:
    """One door's settings for a run."""

    name: str
    source: str | None
    direction: str | None
    area: str | None
    threshold: float | None
    min_margin: float
    decision: DecisionConfig
    relock_s: float

    @property
    def info(self) -> DoorInfo:
        return DoorInfo(self.name, self.direction, self.area)


def spec_from_row(row: dict, config: GateConfig) -> DoorSpec:
    """Combine a ``doors`` row with the config's defaults (and check the mix)."""
    overrides = {k: row[k] for k in DECISION_KEYS if row.get(k) is not None}
    try:
        decision = DecisionConfig.model_validate(config.decision.model_dump() | overrides)
    except ValueError as exc:
        raise ConfigError(f"door {row['name']!r}: {exc}") from None
    margin = row.get("min_margin")
    relock = row.get("relock_s")
    return DoorSpec(
        name=row["name"],
        source=row.get("source"),
        direction=row.get("direction"),
        area=row.get("area"),
        threshold=row.get("threshold") or config.recognition.threshold,
        min_margin=config.recognition.min_margin if margin is None else margin,
        decision=decision,
        relock_s=decision.relock_s if relock is None else relock,
    )


def doors_for_run(
    db: GateDB, config: GateConfig, names: list[str], source: str | None
) -> list[DoorSpec]:
    """The doors ``gate run`` should watch.

    With ``--source``, exactly one door (named, or ``front``; it is recorded
    once its source opens). Otherwise the named doors, or every enabled door
    that has a source. Nothing is written here.
    """
    if source is not None:
        if len(names) > 1:
            raise ConfigError("--source goes with at most one --door")
        name = check_name(names[0] if names else "front")
        row = db.door(name) or {"name": name}
        return [spec_from_row({**row, "source": source}, config)]
    rows = [db.door(n) or _missing(n) for n in names] if names else db.doors()
    if not names:
        rows = [r for r in rows if r["enabled"] and r["source"]]
    specs = [spec_from_row(row, config) for row in rows]
    for spec in specs:
        if not spec.source:
            raise ConfigError(f"door {spec.name!r} has no source: gate doors add/set --source")
    if not specs:
        raise ConfigError("no door to run: add one (gate doors add NAME --source ...) or --source")
    return specs


def _missing(name: str) -> dict:
    raise StoreError(f"no door called {name!r}")

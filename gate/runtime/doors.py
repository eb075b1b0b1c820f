"""Doors as a run sees them: the database's settings over the config's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gate.config import MIN_DETECT_WIDTH, DecisionConfig, GateConfig
from gate.errors import ConfigError, StoreError
from gate.policy.access import DoorInfo
from gate.storage.database import GateDB, check_name

#: door columns that override a ``[decision]`` setting of the same name
DECISION_KEYS = ("confirm_frames", "window_frames", "cooldown_s", "relock_s")


class DoorSettings(BaseModel):
    """A door's own settings, as ``gate doors add/set`` take them and the ``doors`` table
    holds them; None leaves the config's default in force."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None, description="Camera index, RTSP/HTTP URL, video file or folder."
    )
    direction: Literal["in", "out"] | None = Field(None, description="For turnstiles.")
    area: str | None = Field(
        None, min_length=1, description="Anti-passback area the door leads into or out of."
    )
    threshold: float | None = Field(
        None, gt=0, le=4, description="Match distance (instead of the stated stranger risk)."
    )
    min_margin: float | None = Field(None, ge=0, le=4, description="Margin to the runner-up.")
    confirm_frames: int | None = Field(None, ge=1, le=100, description="Good views to decide.")
    window_frames: int | None = Field(None, ge=1, le=100, description="Views fused at most.")
    cooldown_s: float | None = Field(None, ge=0, le=3600, description="Seconds between grants.")
    relock_s: float | None = Field(None, gt=0, le=3600, description="Seconds it stays unlocked.")
    motion: bool | None = Field(
        None, description="Motion gating of the face detector here (true or false)."
    )
    detect_width: int | None = Field(
        None, ge=0, le=8192, description="Width the face detector sees; 0: full resolution."
    )
    enabled: bool = Field(True, description="Run it with gate run.")

    @field_validator("source")
    @classmethod
    def _source_given(cls, source: str | None) -> str | None:
        if source is not None and not source.strip():
            raise ValueError("is empty: give a camera index, URL, file or folder")
        return source

    @field_validator("detect_width")
    @classmethod
    def _wide_enough(cls, width: int | None) -> int | None:
        if width is not None and 0 < width < MIN_DETECT_WIDTH:
            raise ValueError(f"is too narrow: 0 (full resolution) or at least {MIN_DETECT_WIDTH}")
        return width

    @classmethod
    def of_row(cls, row: dict) -> DoorSettings:
        """The settings of a ``doors`` row; a bad value is an error naming the door."""
        try:
            return cls.model_validate({k: row[k] for k in cls.model_fields if k in row})
        except ValidationError as exc:
            raise ConfigError(f"door {row['name']!r}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    item = exc.errors()[0]
    key = ".".join(str(part) for part in item["loc"])
    return f"{key}: {item['msg']} (got {item.get('input')!r})"


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
    motion: bool | None = None  # None: [capture] motion
    detect_width: int | None = None  # None: [capture] detect_width

    @property
    def info(self) -> DoorInfo:
        return DoorInfo(self.name, self.direction, self.area)


def spec_from_row(row: dict, config: GateConfig) -> DoorSpec:
    """Combine a ``doors`` row with the config's defaults (and check the mix)."""
    own = DoorSettings.of_row(row)
    overrides = {k: getattr(own, k) for k in DECISION_KEYS if getattr(own, k) is not None}
    try:
        decision = DecisionConfig.model_validate(config.decision.model_dump() | overrides)
    except ValueError as exc:
        raise ConfigError(f"door {row['name']!r}: {exc}") from None
    margin = own.min_margin
    return DoorSpec(
        name=row["name"],
        source=own.source,
        direction=own.direction,
        area=own.area,
        threshold=own.threshold or config.recognition.threshold,
        min_margin=config.recognition.min_margin if margin is None else margin,
        decision=decision,
        relock_s=decision.relock_s,
        motion=own.motion,
        detect_width=own.detect_width,
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

"""Contracts between the loop and its plugins: faces, matches and the four component kinds.

A plugin supplies a component by subclassing one of :class:`Detector`,
:class:`Encoder`, :class:`Matcher` or :class:`Actuator`, giving it a unique
``name`` and, when it takes settings, its own strict ``Options`` model. The
config picks components by name and passes each its options section; an
actuator gets what it works with (the doors, the MQTT link, the door keys,
the way to carry a remote command) in :class:`ActuatorSetup` when it starts.

The other contracts a plugin meets are re-exported here: :class:`AccessEvent`
(``access_decided``), :class:`AccessRequest` and :class:`Verdict`
(``access_policy``), :class:`TrackFrame` and :class:`LivenessVerdict`
(``presentation_attack``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from gate.policy.access import AccessRequest, Verdict
from gate.storage.events import AccessEvent, Decision

if TYPE_CHECKING:
    from gate.config import GateConfig
    from gate.doctor import Check
    from gate.messaging.mqtt import MqttLink
    from gate.recognition.calibration import ImpostorModel
    from gate.runtime.doors import DoorSpec

__all__ = [
    "AccessEvent",
    "AccessRequest",
    "Action",
    "Actuator",
    "ActuatorSetup",
    "Decision",
    "Detector",
    "DoorCommand",
    "Encoder",
    "Face",
    "LivenessVerdict",  # noqa: F822  (module __getattr__)
    "Match",
    "Matcher",
    "RemoteCommands",
    "StrictOptions",
    "TrackFrame",  # noqa: F822
    "Verdict",
]

#: Landmark schemes a detector may report. ``yunet5``: the subject's right eye,
#: left eye, nose tip, right mouth corner, left mouth corner. ``dlib5``: the
#: order of dlib's 5-point shape predictor (two corners of each eye, nose base).
LandmarkScheme = Literal["yunet5", "dlib5"]


@dataclass(frozen=True, eq=False)
class Face:
    """A face found in an image: box ``(x, y, w, h)`` in pixels, score and landmarks."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None
    scheme: LandmarkScheme = "yunet5"

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels."""
        return float(min(self.box[2], self.box[3]))

    def shifted(self, dx: float, dy: float, scale: float = 1.0) -> Face:
        """This face in another image: ``(p - (dx, dy)) * scale`` for every point."""
        x, y, w, h = self.box
        box = ((x - dx) * scale, (y - dy) * scale, w * scale, h * scale)
        marks = None
        if self.landmarks is not None:
            marks = ((self.landmarks - np.array([dx, dy], np.float32)) * scale).astype(np.float32)
        return Face(box, self.score, marks, self.scheme)


#: What a door command asks of the door.
Action = Literal["unlock", "lock"]

MatchStatus = Literal["match", "unknown", "ambiguous", "too_small", "low_quality"]


@dataclass(frozen=True)
class Match:
    """What a matcher says of one embedding.

    ``too_small`` faces are below ``[recognition] min_face_px``: not encoded,
    not matched, never decided on. ``low_quality`` faces are encoded (so that a
    face track can follow them) but below the quality floor: they never count
    towards a grant, and are not counted as strangers either.

    ``person_id`` is set only for ``status == "match"``. ``candidate_id`` is the
    nearest enrolled person whatever the status, ``distance`` the distance to
    that person's nearest template and ``margin`` how much farther the nearest
    *other* person is (``inf`` with a single person enrolled).
    """

    status: MatchStatus
    person_id: int | None
    candidate_id: int | None
    distance: float
    margin: float


@dataclass(frozen=True)
class DoorCommand:
    """An order to a door controller (``unlock`` or ``lock``), valid until ``expires_at``.

    Times are epoch seconds. ``reason`` says why (``granted``, ``manual``,
    ``remote``); ``actor`` who asked when it was not a face. ``credential`` is
    the person's card credential (``26bit:12:34567``; see
    :mod:`gate.actions.credentials`) when an actuator presents one to a panel;
    it is never part of the JSON that controllers receive.
    """

    door: str
    person: str | None
    person_id: int | None
    distance: float | None
    event_id: int | None
    issued_at: float
    expires_at: float
    reason: str = "granted"
    action: Action = "unlock"
    actor: str | None = None
    credential: str | None = None

    def for_event(self, event_id: int | None) -> DoorCommand:
        """This command carrying the id of the event it acts on."""
        return replace(self, event_id=event_id)

    def expired(self, now: float) -> bool:
        """True once the command must no longer be sent."""
        return now >= self.expires_at

    def to_json(self) -> str:
        """The command as the JSON payload controllers receive."""
        data = asdict(self)
        del data["credential"]
        if data["distance"] is not None:
            data["distance"] = round(data["distance"], 4)
        return json.dumps(data, sort_keys=True)


class StrictOptions(BaseModel):
    """Base for every component's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(ABC):  # noqa: B024  (a common base; each kind has its abstract methods)
    """Common ground of every pluggable part: a unique ``name``, a ``description`` that
    ``gate plugins`` shows, and strict ``Options`` validated from the config."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Options: ClassVar[type[StrictOptions]] = StrictOptions

    def __init__(self, options: StrictOptions | None = None):
        self.options = options if options is not None else self.Options()

    def close(self) -> None:  # noqa: B027  (optional: most components hold nothing)
        """Release what the component holds (threads, sockets, models)."""


class Detector(Component):
    """Finds faces in a BGR ``uint8`` image of shape ``(H, W, 3)``."""

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face found, with its box, score and landmarks."""


class Encoder(Component):
    """Turns faces into embeddings.

    ``space`` names the embedding space: templates made by any encoder of the
    same space can be compared (a port that reproduces another encoder shares
    its space). ``threshold`` is the default Euclidean match distance.
    """

    dim: ClassVar[int] = 0
    space: ClassVar[str] = ""
    threshold: ClassVar[float] = 0.6

    @abstractmethod
    def encode(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Embeddings ``(len(faces), dim)`` float32 for the faces of one image."""

    def impostor_model(self, rule: str = "nearest") -> ImpostorModel | None:
        """How close strangers come in this encoder's space, per image condition.

        ``rule`` is how the matcher scores a person (:attr:`Matcher.rule`).

        gate needs it to turn ``[recognition] stranger_acceptance`` into a
        distance (:mod:`gate.recognition.calibration`); without one the encoder's fixed
        ``threshold`` is used and gate says that no risk can be stated.
        """
        return None


class Matcher(Component):
    """Says which enrolled person, if any, an embedding belongs to."""

    #: how a person is scored (``nearest`` template or ``mean`` of templates): the impostor
    #: model for this rule calibrates the threshold (:mod:`gate.recognition.calibration`)
    rule: str = "nearest"

    @abstractmethod
    def fit(self, embeddings: np.ndarray, person_ids: np.ndarray) -> None:
        """Load every template: ``embeddings`` ``(T, dim)``, ``person_ids`` ``(T,)``."""

    @abstractmethod
    def match(
        self, embeddings: np.ndarray, *, threshold: float | np.ndarray, min_margin: float
    ) -> list[Match]:
        """One :class:`Match` per row of ``embeddings``; unknown when in doubt.

        ``threshold`` is one distance for every row or one per row (gate
        calibrates it per image condition: see :mod:`gate.recognition.calibration`).
        """


class RemoteCommands(Protocol):
    """How an actuator hands on a door command that came from outside (Home Assistant)."""

    def command(self, door: str, action: Action, *, actor: str, reason: str) -> AccessEvent | None:
        """Carry out ``action`` at ``door`` through gate's one path (logged, signed, sent)."""

    def refused(self, door: str, action: str | None, *, actor: str, why: str) -> AccessEvent:
        """Log a command that was refused, with who it says asked and why."""


@dataclass(frozen=True)
class ActuatorSetup:
    """What an actuator is given when it starts.

    ``doors`` are the doors it serves. ``one_off`` is set for a short-lived
    process beside a running gate (``gate doors unlock``, ``gate doors
    remove``): it sends what it is asked, announces nothing of its own, and
    does not fail for want of a broker. ``mqtt()`` returns gate's shared MQTT
    link, connecting it on first call. ``keys_dir`` holds the doors' signing
    keys. ``remote`` carries commands from outside into the run (None when
    nothing runs doors).
    """

    config: GateConfig
    doors: tuple[DoorSpec, ...]
    keys_dir: Path
    mqtt: Callable[[], MqttLink]
    remote: RemoteCommands | None = None
    one_off: bool = False
    show: Callable[[str, str], None] = lambda door, text: None


class Actuator(Component):
    """Carries door commands, decisions and presence out of gate."""

    #: whether :meth:`send` really delivers (counts towards an event's ``delivered``)
    delivers: ClassVar[bool] = True
    #: whether it presents the person's credential (card number) to a panel: grants then
    #: carry it in :attr:`DoorCommand.credential` and the event logs it
    presents_credentials: ClassVar[bool] = False

    def start(self, setup: ActuatorSetup) -> None:
        """Connect and take what the run gives (:class:`ActuatorSetup`); before the first frame."""

    @abstractmethod
    def send(self, command: DoorCommand) -> bool | None:
        """Send ``command`` (unlock or lock); True only when delivery is confirmed in time.

        None when the door is not one this actuator serves (it does not count
        towards the event's ``delivered``)."""

    def announce(self, event: AccessEvent) -> None:
        """Publish a decision (granted or denied) for observers."""

    def presence(self, door: str, present: bool) -> None:
        """A face came into view at ``door`` (True) or none has been seen for a while."""

    def availability(self, door: str, available: bool, why: str) -> None:
        """``door``'s camera gives frames (True), or not (False, and ``why``)."""

    def doors_changed(self, doors: list[DoorSpec]) -> None:
        """The run's doors after doors were added, changed, disabled or removed while gate
        runs."""

    def diagnose(self, setup: ActuatorSetup, timeout: float) -> list[Check]:
        """``gate doctor``'s lines for what this actuator reaches (links, devices), each
        within ``timeout`` seconds; without :meth:`start`. Most have nothing of their own."""
        return []


def __getattr__(name: str) -> Any:
    """The liveness contracts, imported on first use (their module imports this one)."""
    if name in ("LivenessVerdict", "TrackFrame"):
        from gate.policy import liveness

        return getattr(liveness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

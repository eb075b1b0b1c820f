"""The components the config chose, built from the plugins' registry, and what they do together."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import closing
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from pydantic import ValidationError

from gate.components import Actuator, Component, Detector, Encoder, Face, Match, Matcher
from gate.config import (
    DEFAULT_STRANGER_ACCEPTANCE,
    GateConfig,
    config_origin,
    describe_errors,
)
from gate.errors import ComponentError, ConfigError, GateError
from gate.plugins import KINDS, Registry
from gate.recognition.calibration import (
    EXACT_NEIGHBOURS_UP_TO,
    SITE_SAMPLE,
    Calibration,
    ImpostorModel,
    calibrate,
    look_alike_caps,
    look_alikes,
    normalise,
)
from gate.recognition.quality import FaceQuality, QualityFloor, measure
from gate.storage import index_cache
from gate.storage.database import GateDB

logger = logging.getLogger("gate.pipeline")

#: galleries of at least this many templates keep their built index beside the database
INDEX_CACHE_ABOVE = 50_000

TOO_SMALL = Match("too_small", None, None, float("inf"), float("inf"))


@dataclass(frozen=True)
class _Loaded:
    """What the matcher holds of the database: the last template id read, templates per person."""

    top: int
    counts: dict[int, int]


@dataclass(frozen=True)
class Recognition:
    """One face of an image, its embedding, its quality and, once matched, the verdict."""

    face: Face
    embedding: np.ndarray
    match: Match | None = None
    quality: FaceQuality | None = None
    threshold: float | None = None


def check_component_sections(config: GateConfig, registry: Registry) -> None:
    """Every ``[detectors.X]``-style section must name a known component and validate."""
    origin = config_origin(config)
    for kind in KINDS:
        for name, section in getattr(config, f"{kind}s").items():
            try:
                cls = registry.get(kind, name).cls
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {kind}s.{name}: {exc}") from None
            _options(cls, section, origin, f"{kind}s.{name}")
    for kind in ("detector", "encoder", "matcher"):
        _named(registry, kind, getattr(config.pipeline, kind), origin)
    for name in config.pipeline.actuators:
        _named(registry, "actuator", name, origin)


def _named(registry: Registry, kind: str, name: str, origin: str) -> type[Component]:
    try:
        return registry.get(kind, name).cls
    except ConfigError as exc:
        key = "actuators" if kind == "actuator" else kind
        raise ConfigError(f"{origin}: pipeline.{key}: {exc}") from None


def _options(cls: type[Component], section: dict, origin: str, key: str):
    try:
        return cls.Options.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, origin, prefix=key)) from None


class Pipeline:
    """Detector, encoder, matcher and actuators, each built on first use."""

    def __init__(self, config: GateConfig, registry: Registry):
        check_component_sections(config, registry)
        self.config = config
        self.registry = registry
        self._calibration: Calibration | None = None
        self._caps: dict[int, float] = {}
        self._loaded: _Loaded | None = None  # what the matcher holds of the database
        self._caps_lock = threading.Lock()
        self._caps_generation = 0
        #: set once the look-alike caps of the gallery loaded last are in force
        self.caps_ready = threading.Event()

    def build(self, kind: str, name: str) -> Component:
        """An instance of the ``kind`` called ``name`` with its options from the config."""
        cls = _named(self.registry, kind, name, config_origin(self.config))
        section = getattr(self.config, f"{kind}s").get(name, {})
        options = _options(cls, section, config_origin(self.config), f"{kind}s.{name}")
        try:
            return cls(options)
        except GateError:
            raise
        except Exception as exc:
            raise ComponentError(f"{kind} {name!r} cannot start: {exc}") from exc

    @cached_property
    def detector(self) -> Detector:
        return self.build("detector", self.config.pipeline.detector)

    @cached_property
    def encoder(self) -> Encoder:
        return self.build("encoder", self.config.pipeline.encoder)

    @cached_property
    def matcher(self) -> Matcher:
        return self.build("matcher", self.config.pipeline.matcher)

    @cached_property
    def actuators(self) -> list[Actuator]:
        return [self.build("actuator", name) for name in self.config.pipeline.actuators]

    @cached_property
    def floor(self) -> QualityFloor:
        """What a face must reach to count towards a grant."""
        r = self.config.recognition
        return QualityFloor(
            min_size=r.min_face_px,
            min_sharpness=r.min_sharpness,
            max_yaw=r.max_yaw,
            min_score=r.min_detector_score,
        )

    @property
    def calibration(self) -> Calibration:
        """The thresholds in force for the templates loaded last (none loaded: an empty site)."""
        if self._calibration is None:
            self.fit(np.zeros((0, self.encoder.dim), np.float32), np.zeros(0, np.int64))
        return self._calibration

    @property
    def threshold(self) -> float:
        """The strictest distance in force (per image condition, see :attr:`calibration`)."""
        return min(self.calibration.thresholds.values())

    @cached_property
    def impostor_model(self) -> ImpostorModel | None:
        """The encoder's impostor model for the matcher's rule (None: no risk can be stated)."""
        return self.encoder.impostor_model(getattr(self.matcher, "rule", "nearest"))

    def normalise(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings as the matcher compares them: scaled to the impostor model's radius.

        The length of a dlib embedding varies from photo to photo and says little
        about who it is; on a common radius strangers and enrolled people
        separate better (docs/open-set.md). Without a model they stay as they are.
        """
        model = self.impostor_model
        return normalise(embeddings, model.radius if model is not None else None)

    def fit(self, embeddings: np.ndarray, person_ids: np.ndarray) -> Calibration:
        """Give the matcher these templates and calibrate the thresholds for them."""
        embeddings = self.normalise(embeddings)
        person_ids = np.asarray(person_ids)
        self._loaded = None  # not the database's templates (or not known to be)
        self.matcher.fit(embeddings, person_ids)
        self._refresh_caps(embeddings, person_ids)
        return self.recalibrate(embeddings, person_ids)

    def load_templates(self, db: GateDB, *, cached: bool = True) -> int:
        """Give the matcher every template in the encoder's space; returns how many.

        A large gallery's index is kept beside the database once built
        (:mod:`gate.storage.index_cache`) and read back at the next start, with
        what was enrolled since added on top.
        """
        if cached and self._restore_index(db):
            return self.refresh(db)
        embeddings, person_ids, top = db.load_template_rows(self.encoder.space)
        self._check_dim(embeddings)
        self.fit(embeddings, person_ids)
        people, counts = np.unique(person_ids, return_counts=True)
        self._loaded = _Loaded(top, dict(zip(people.tolist(), counts.tolist(), strict=True)))
        if len(embeddings) >= INDEX_CACHE_ABOVE:
            self._save_index(db)
        return len(embeddings)

    def _index_key(self) -> dict:
        model = self.impostor_model
        return {
            "format": 1,
            "space": self.encoder.space,
            "matcher": self.matcher.name,
            "options": self.matcher.options.model_dump(mode="json"),
            "radius": None if model is None else model.radius,
        }

    def _save_index(self, db: GateDB) -> None:
        """Keep the matcher's built index beside the database (a matcher that can say it)."""
        state = self.matcher.state() if hasattr(self.matcher, "state") else None
        if state is None or self._loaded is None:
            return
        loaded = self._loaded
        state["top"] = np.array(loaded.top)
        state["people"] = np.array(list(loaded.counts), np.int64)
        state["counts"] = np.array(list(loaded.counts.values()), np.int64)
        path = index_cache.cache_path(db.path, self.encoder.space, self.matcher.name)
        try:
            index_cache.save(path, self._index_key(), state)
        except OSError as exc:
            logger.warning("index not kept in %s (the next start builds it again): %s", path, exc)

    def _restore_index(self, db: GateDB) -> bool:
        """Read the kept index back, if there is one for this gallery; True when it was."""
        if not hasattr(self.matcher, "restore"):
            return False
        path = index_cache.cache_path(db.path, self.encoder.space, self.matcher.name)
        state = index_cache.load(path, self._index_key())
        if state is None:
            return False
        try:
            self.matcher.restore(state)
        except Exception as exc:
            logger.warning("index cache %s not usable, rebuilding: %s", path, exc)
            return False
        counts = dict(zip(state["people"].tolist(), state["counts"].tolist(), strict=True))
        self._loaded = _Loaded(int(state["top"]), counts)
        logger.info("index of %d templates read from %s", sum(counts.values()), path)
        return True

    def refresh(self, db: GateDB) -> int:
        """Follow enrolments and removals made while gate runs; returns the templates held.

        A matcher that can ``add`` and ``remove`` (``faiss``) is updated in place
        with the templates enrolled since and the people gone, and the thresholds
        recalibrated from the counts and a sample; anything else (re-encoded
        templates, another matcher) loads everything again.
        """
        loaded = self._loaded
        incremental = hasattr(self.matcher, "add") and hasattr(self.matcher, "remove")
        if loaded is None or not incremental:
            return self.load_templates(db, cached=False)
        space = self.encoder.space
        new, new_ids, top = db.load_template_rows(space, after=loaded.top)
        counts = db.template_counts(space)
        gone = loaded.counts.keys() - counts.keys()
        expected = dict(loaded.counts)
        for person in gone:
            del expected[person]
        for person, n in zip(*np.unique(new_ids, return_counts=True), strict=True):
            expected[int(person)] = expected.get(int(person), 0) + int(n)
        if expected != counts:  # templates changed in place (re-encoded): start again
            return self.load_templates(db, cached=False)
        self._check_dim(new)
        for person in gone:
            self.matcher.remove(person)
        if len(new):
            self.matcher.add(self.normalise(new), new_ids)
        self._loaded = _Loaded(max(top, loaded.top), counts)
        sample, sample_ids = db.sample_templates(space, SITE_SAMPLE)
        sample = self.normalise(sample)
        ks = np.array(list(counts.values()), np.int64)
        self.recalibrate(sample, sample_ids, counts=ks)
        with self._caps_lock:
            self._caps = {p: c for p, c in self._caps.items() if p not in gone}
        self._refresh_caps(None, None, db_path=db.path)
        return sum(counts.values())

    def _check_dim(self, embeddings: np.ndarray) -> None:
        if len(embeddings) and embeddings.shape[1] != self.encoder.dim:
            raise ComponentError(
                f"templates have {embeddings.shape[1]} dimensions, encoder "
                f"{self.encoder.name!r} makes {self.encoder.dim}"
            )

    def _refresh_caps(
        self, embeddings: np.ndarray | None, person_ids: np.ndarray | None, db_path=None
    ) -> None:
        """Look-alike caps for the gallery: at once for a small one, else in the background.

        While a large gallery's caps are computed, the caps known before stay in
        force (a person removed meanwhile loses theirs); the margin rule holds
        throughout.
        """
        with self._caps_lock:
            self._caps_generation += 1
            generation = self._caps_generation
            self.caps_ready.clear()
        margin = self.config.recognition.min_margin
        if embeddings is not None and len(np.unique(person_ids)) <= EXACT_NEIGHBOURS_UP_TO:
            caps = look_alike_caps(embeddings, person_ids, margin)
            with self._caps_lock:
                self._caps = caps
                self.caps_ready.set()
            return

        def compute() -> None:
            started = time.monotonic()
            x, ids = embeddings, person_ids
            if x is None:
                with closing(GateDB(db_path)) as db:
                    x, ids, _ = db.load_template_rows(self.encoder.space)
                x = self.normalise(x)
            caps = look_alike_caps(x, ids, margin)
            with self._caps_lock:
                if generation != self._caps_generation:
                    return  # the gallery changed again meanwhile: a newer run sets them
                self._caps = caps
                self.caps_ready.set()
            logger.info(
                "look-alike caps for %d people ready in %.1f s", len(caps),
                time.monotonic() - started,
            )  # fmt: skip

        threading.Thread(target=compute, name="gate-look-alikes", daemon=True).start()

    def look_alikes(self, db: GateDB) -> list[tuple[int, int, float]]:
        """Pairs of people enrolled whose templates lie within the colour threshold in force."""
        embeddings, person_ids, _ = db.load_template_rows(self.encoder.space)
        if not len(embeddings):
            return []
        embeddings = self.normalise(embeddings)
        return look_alikes(embeddings, person_ids, self.calibration.threshold("colour"))

    def _capped(self, match: Match) -> Match:
        """A match beyond its person's look-alike cap becomes ``ambiguous``."""
        cap = self._caps.get(match.person_id)
        if match.status == "match" and cap is not None and match.distance > cap:
            return replace(match, status="ambiguous", person_id=None)
        return match

    def recalibrate(
        self,
        embeddings: np.ndarray,
        person_ids: np.ndarray,
        override: float | None = None,
        counts: np.ndarray | None = None,
    ) -> Calibration:
        """Thresholds for this gallery (normalised) at the stated risk, or a fixed ``override``.

        ``counts``: templates per person, when ``embeddings`` are only a sample.
        """
        r = self.config.recognition
        override = override if override is not None else r.threshold
        calibration = calibrate(
            self.impostor_model,
            embeddings,
            person_ids,
            r.stranger_acceptance,
            override=override,
            fallback=self.encoder.threshold,
            counts=counts,
        )
        self._calibration = calibration
        self._explain(calibration)
        return calibration

    def _explain(self, calibration: Calibration) -> None:
        r = self.config.recognition
        if calibration.source == "encoder":
            logger.warning(
                "encoder %r has no impostor model: fixed threshold %.3f, stranger acceptance "
                "cannot be stated",
                self.encoder.name,
                calibration.threshold("colour"),
            )
            return
        worst = max(calibration.acceptance.values()) if calibration.acceptance else 0.0
        if calibration.source == "override" and worst > r.stranger_acceptance:
            logger.warning(
                "fixed threshold %.3f overrides stranger_acceptance %g: at %d people it is "
                "estimated to name %.2g%% of strangers as someone (worst image condition)",
                calibration.threshold("colour"),
                r.stranger_acceptance,
                calibration.people,
                100 * worst,
            )
        elif r.stranger_acceptance > DEFAULT_STRANGER_ACCEPTANCE:
            logger.warning(
                "stranger_acceptance %g is looser than gate's default %g: more strangers may be "
                "named as someone",
                r.stranger_acceptance,
                DEFAULT_STRANGER_ACCEPTANCE,
            )

    def thresholds_for(
        self, qualities: list[FaceQuality], override: float | None = None
    ) -> np.ndarray:
        """The distance for each face: the door's fixed one, else its condition's."""
        if override is not None:
            return np.full(len(qualities), override, np.float64)
        calibration = self.calibration
        return np.array([calibration.threshold(q.condition) for q in qualities], np.float64)

    def judge(
        self,
        embedding: np.ndarray,
        views: list[Recognition],
        *,
        spread: float = 0.0,
        threshold: float | None = None,
        min_margin: float | None = None,
    ) -> tuple[Match, float]:
        """Judge a track's fused embedding; ``(match, threshold used)``.

        The threshold is the strictest of the views' image conditions. Averaging
        views pulls a stranger's embedding towards everyone by exactly the views'
        ``spread`` (their mean squared distance from the fused embedding), so
        the fused distance ``d`` is judged as ``sqrt(d**2 + spread)``: the root mean
        square of the views' own distances, on which the per-photo calibration
        holds.
        """
        qualities = [v.quality for v in views if v.quality is not None]
        if qualities:
            limit = float(self.thresholds_for(qualities, threshold).min())
        else:
            limit = threshold if threshold is not None else self.threshold
        margin = self.config.recognition.min_margin if min_margin is None else min_margin
        (raw,) = self.matcher.match(
            np.asarray(embedding, np.float32)[None, :],
            threshold=float(np.sqrt(max(limit**2 - spread, 0.0))),
            min_margin=0.0,
        )
        distance = float(np.sqrt(raw.distance**2 + spread))
        runner_up = float(np.sqrt((raw.distance + raw.margin) ** 2 + spread))
        status, person = raw.status, raw.person_id
        if status == "match" and runner_up - distance < margin:
            status, person = "ambiguous", None
        judged = replace(raw, status=status, person_id=person, distance=distance,
                         margin=runner_up - distance)  # fmt: skip
        return self._capped(judged), limit

    def match(
        self,
        embeddings: np.ndarray,
        qualities: list[FaceQuality],
        *,
        threshold: float | None = None,
        min_margin: float | None = None,
    ) -> list[tuple[Match, float]]:
        """Match embeddings of faces of known quality: ``(match, threshold used)`` each.

        Faces below the quality floor come back ``low_quality`` (their nearest
        person kept as the candidate), never as a match.
        """
        limits = self.thresholds_for(qualities, threshold)
        matches = self.matcher.match(
            embeddings,
            threshold=limits,
            min_margin=self.config.recognition.min_margin if min_margin is None else min_margin,
        )
        floor = self.floor
        out = []
        for match, quality, limit in zip(matches, qualities, limits, strict=True):
            if floor.failures(quality):
                match = replace(match, status="low_quality", person_id=None)
            out.append((self._capped(match), float(limit)))
        return out

    def recognise(
        self,
        image: np.ndarray,
        faces: list[Face] | None = None,
        *,
        detector: Detector | None = None,
        encoder: Encoder | None = None,
        threshold: float | None = None,
        min_margin: float | None = None,
    ) -> list[Recognition]:
        """Detect (unless ``faces`` are given), encode in one batch, and match.

        ``detector``, ``encoder``, ``threshold`` and ``min_margin`` override the
        pipeline's own (a door may have its own detector and a fixed threshold);
        without ``threshold`` each face gets its image condition's calibrated one.
        """
        detector = detector or self.detector
        faces = detector.detect(image) if faces is None else faces
        smallest = self.config.recognition.min_face_px
        usable = [face for face in faces if face.size >= smallest]
        out = [
            Recognition(face, np.zeros(0, np.float32), TOO_SMALL)
            for face in faces
            if face.size < smallest
        ]
        if usable:
            embeddings = self.normalise((encoder or self.encoder).encode(image, usable))
            qualities = [measure(image, face) for face in usable]
            matches = self.match(embeddings, qualities, threshold=threshold, min_margin=min_margin)
            out[:0] = [
                Recognition(face, vector, match, quality, limit)
                for face, vector, quality, (match, limit) in zip(
                    usable, embeddings, qualities, matches, strict=True
                )
            ]
        return out

    def close(self) -> None:
        """Close every component built so far."""
        for attr in ("actuators", "matcher", "encoder", "detector"):
            built = self.__dict__.get(attr)
            for component in built if isinstance(built, list) else [built] if built else []:
                component.close()

"""The components the config chose, built from the plugins' registry, and what they do together."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pydantic import ValidationError

from gate.components import Actuator, Component, Detector, Encoder, Face, Match, Matcher
from gate.config import GateConfig, config_origin, describe_errors
from gate.context import Context
from gate.database import GateDB
from gate.errors import ComponentError, ConfigError, GateError
from gate.plugins import KINDS, Registry

TOO_SMALL = Match("too_small", None, None, float("inf"), float("inf"))


@dataclass(frozen=True)
class Recognition:
    """One face of an image, its embedding and, once matched, the verdict."""

    face: Face
    embedding: np.ndarray
    match: Match | None = None


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

    def __init__(self, config: GateConfig, registry: Registry, context: Context | None = None):
        check_component_sections(config, registry)
        self.config = config
        self.registry = registry
        self.context = context or Context(config)

    def build(self, kind: str, name: str) -> Component:
        """An instance of the ``kind`` called ``name`` with its options from the config."""
        cls = _named(self.registry, kind, name, config_origin(self.config))
        section = getattr(self.config, f"{kind}s").get(name, {})
        options = _options(cls, section, config_origin(self.config), f"{kind}s.{name}")
        try:
            return cls(options, self.context)
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

    @property
    def threshold(self) -> float:
        """The match distance in force: the config's, else the encoder's default."""
        return self.config.recognition.threshold or self.encoder.threshold

    def load_templates(self, db: GateDB) -> int:
        """Give the matcher every template in the encoder's space; returns how many."""
        embeddings, person_ids = db.load_templates(self.encoder.space)
        if len(embeddings) and embeddings.shape[1] != self.encoder.dim:
            raise ComponentError(
                f"templates have {embeddings.shape[1]} dimensions, encoder "
                f"{self.encoder.name!r} makes {self.encoder.dim}"
            )
        self.matcher.fit(embeddings, person_ids)
        return len(embeddings)

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
        pipeline's own (a door may have its own detector and thresholds).
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
            embeddings = (encoder or self.encoder).encode(image, usable)
            matches = self.matcher.match(
                embeddings,
                threshold=threshold or self.threshold,
                min_margin=self.config.recognition.min_margin if min_margin is None else min_margin,
            )
            out[:0] = [
                Recognition(face, vector, match)
                for face, vector, match in zip(usable, embeddings, matches, strict=True)
            ]
        return out

    def close(self) -> None:
        """Close every component built so far, then the shared services."""
        for attr in ("actuators", "matcher", "encoder", "detector"):
            built = self.__dict__.get(attr)
            for component in built if isinstance(built, list) else [built] if built else []:
                component.close()
        self.context.close()

"""gate's settings: strict models, loaded from TOML, with errors that name file and key.

gate runs with no config file at all: every field has a default. A file is
looked for in ``--config``, then ``$GATE_CONFIG``, then ``gate.toml`` in the
user's config directory. Secrets may come from the environment
(``GATE_MQTT_PASSWORD``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gate.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class PipelineConfig(Section):
    """Which components run, by the names their plugins registered."""

    detector: str = Field("yunet", description="Face detector.")
    encoder: str = Field("dlib-torch", description="Face encoder (face -> embedding).")
    matcher: str = Field("nearest", description="Matcher (embedding -> person).")
    actuators: list[str] = Field(
        default_factory=lambda: ["mqtt", "homeassistant", "log"],
        description="Active actuators, in order.",
    )


#: the strictest stated risk at which the shared clips' known people are still granted
#: (bench/clip_tracks.py; docs/open-set.md)
DEFAULT_STRANGER_ACCEPTANCE = 0.005


class RecognitionConfig(Section):
    """When an embedding counts as an enrolled person."""

    stranger_acceptance: float = Field(
        DEFAULT_STRANGER_ACCEPTANCE,
        gt=0,
        le=0.2,
        description="Share of strangers (per face track; per photo for identify) that may be "
        "named as someone. gate turns it into a distance for the people enrolled now.",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        le=4,
        description="Fixed largest match distance: overrides stranger_acceptance (gate says "
        "what stranger acceptance it estimates for it).",
    )
    min_margin: float = Field(
        0.04, ge=0, le=4, description="Nearest other person must be this much farther."
    )
    min_face_px: int = Field(
        48, ge=0, le=4096, description="Smaller faces are too blurry to decide on: ignored."
    )
    min_sharpness: float = Field(
        8.0, ge=0, description="Faces less sharp never count for a grant (low_quality)."
    )
    max_yaw: float = Field(
        1.25,
        gt=0,
        le=4,
        description="Faces turned further away (nose tip off the eyes' middle, in eye "
        "spans: 0.5 three-quarter, beyond 1 near profile) never count for a grant.",
    )
    min_detector_score: float = Field(
        0.6, ge=0, le=1, description="Less certain detections never count for a grant."
    )


class DecisionConfig(Section):
    """How matches over frames become grants and denials."""

    confirm_frames: int = Field(3, ge=1, le=100, description="N: wins needed in the window.")
    window_frames: int = Field(5, ge=1, le=100, description="M: frames in the window.")
    cooldown_s: float = Field(
        5.0, ge=0, le=3600, description="No new grant for the same person at a door for this."
    )
    unknown_interval_s: float = Field(
        5.0, ge=0, le=3600, description="At most one logged denial per door in this time."
    )
    unlock_ttl_s: float = Field(
        2.0, gt=0, le=60, description="An unlock not delivered within this is dropped."
    )
    snapshots: bool = Field(True, description="Keep a JPEG of the face with each event.")
    relock_s: float = Field(
        5.0, gt=0, le=3600, description="A door is taken to lock again this long after an unlock."
    )
    presence_off_s: float = Field(
        2.0, ge=0, le=600, description="'Face in view' turns off after this long without one."
    )

    @model_validator(mode="after")
    def _window_holds_confirmations(self) -> DecisionConfig:
        if self.confirm_frames > self.window_frames:
            raise ValueError(
                f"confirm_frames ({self.confirm_frames}) must not exceed "
                f"window_frames ({self.window_frames})"
            )
        return self


class EnrollmentConfig(Section):
    """What a photo must show to be enrolled."""

    min_face_px: int = Field(64, ge=16, le=4096, description="Shorter side of the face box.")
    min_sharpness: float = Field(
        25.0, ge=0, description="Least variance of the Laplacian on the face at 112 px."
    )
    max_yaw: float = Field(
        0.3, gt=0, le=2, description="Most the face may be turned (nose off the eyes' middle)."
    )
    min_detector_score: float = Field(0.8, ge=0, le=1, description="Least detector confidence.")


class MqttConfig(Section):
    """The broker gate talks to; no host means an embedded broker on loopback."""

    host: str | None = Field(None, description="Broker host; empty starts an embedded broker.")
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = Field(None, description="Or set GATE_MQTT_PASSWORD.")
    tls: bool = False
    ca_certs: Path | None = Field(None, description="CA the broker's certificate must chain to.")
    certfile: Path | None = Field(None, description="Client certificate (PEM), for TLS.")
    keyfile: Path | None = Field(None, description="Its private key, if not in certfile.")
    tls_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")
    client_id: str = Field("gate", min_length=1, max_length=64)
    topic_prefix: str = Field("gate", min_length=1, pattern=r"^[^#+]+$")
    keepalive_s: int = Field(
        5, ge=2, le=3600, description="Short: a frozen broker is dropped, not waited for."
    )
    ack_timeout_s: float = Field(1.0, gt=0, le=30, description="Wait this long for a PUBACK.")
    connect_wait_s: float = Field(
        5.0, ge=0, le=120, description="At start, wait this long for the broker."
    )
    required: bool = Field(
        True,
        description="gate run stops at start without the broker; false: it decides anyway, "
        "and says that unlocks cannot be delivered.",
    )

    @model_validator(mode="after")
    def _password_from_env(self) -> MqttConfig:
        if self.password is None and os.environ.get("GATE_MQTT_PASSWORD"):
            self.password = SecretStr(os.environ["GATE_MQTT_PASSWORD"])
        return self

    @model_validator(mode="after")
    def _tls_settings_need_tls(self) -> MqttConfig:
        given = [k for k in ("ca_certs", "certfile", "keyfile") if getattr(self, k) is not None]
        if given and not self.tls:
            raise ValueError(f"{', '.join(given)} need tls = true")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
        if self.tls and self.host is None:
            raise ValueError("tls needs a host: the embedded broker listens on loopback, plain")
        return self


#: the narrowest frame the face detector is given (``detect_width``)
MIN_DETECT_WIDTH = 160


class CaptureConfig(Section):
    """How frames are read from a source."""

    queue_size: int = Field(2, ge=1, le=64, description="Frames waiting; the oldest drops.")
    reopen_min_s: float = Field(0.5, gt=0, le=60, description="First wait before reopening.")
    reopen_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between tries.")
    max_reopen_attempts: int = Field(
        0, ge=0, description="Give up after this many failed reopenings; 0 tries for ever."
    )
    stall_s: float = Field(
        10.0, gt=0, le=3600, description="A camera giving no frame this long is restarted."
    )
    motion: bool = Field(
        True,
        description="Run the face detector only on frames that move, while a face track is "
        "open, and every detect_every_s.",
    )
    motion_threshold: int = Field(
        25, ge=1, le=255, description="Grey levels a pixel must change by to count as moving."
    )
    motion_min_area: float = Field(
        0.005, gt=0, le=1, description="Share of the frame that must move to run the detector."
    )
    detect_every_s: float = Field(
        1.0, gt=0, le=60, description="With motion gating, the detector still runs this often."
    )
    detect_width: int = Field(
        0,
        ge=0,
        le=8192,
        description="Width frames are shrunk to for the face detector (boxes scaled back); "
        "0: full resolution.",
    )

    @field_validator("detect_width")
    @classmethod
    def _wide_enough(cls, width: int) -> int:
        if 0 < width < MIN_DETECT_WIDTH:
            raise ValueError(f"must be 0 (full resolution) or at least {MIN_DETECT_WIDTH}")
        return width


class SiteConfig(Section):
    """Where the doors are."""

    timezone: str | None = Field(
        None, description="IANA zone for rules' hours, e.g. Europe/Berlin; default: the system's."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {name!r}") from None
        return name

    def zone(self):
        """The site's time zone as a tzinfo."""
        from datetime import datetime
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone) if self.timezone else datetime.now().astimezone().tzinfo


class PolicyConfig(Section):
    """The built-in access rules' site-wide switches."""

    without_rules: Literal["allow", "deny"] = Field(
        "allow", description="With no rules at all: every enrolled person passes, or nobody."
    )
    anti_passback: bool = Field(
        True, description="Doors with an area and a direction refuse a second entry."
    )


class RetentionConfig(Section):
    """How long the log keeps what it stores, in days; 0 keeps it for ever."""

    stranger_snapshots_days: int = Field(
        7, ge=0, le=36500, description="Face snapshots of events that name nobody."
    )
    snapshots_days: int = Field(30, ge=0, le=36500, description="Every face snapshot.")
    events_days: int = Field(
        365, ge=0, le=36500, description="Every logged decision (the chain keeps verifying)."
    )


class LivenessConfig(Section):
    """The built-in liveness baseline (``gate_plugins.liveness``): a photo or a screen."""

    enabled: bool = Field(
        False,
        description="Check every face track before a grant; off: it costs genuine users more "
        "than 2% (docs/security.md).",
    )
    min_frames: int = Field(
        3, ge=1, le=30, description="Fewer frames in the track: too little evidence, denied."
    )
    min_motion: float = Field(
        0.1, gt=0, le=10, description="A face that changes less than this is a still picture."
    )
    max_screen: float = Field(
        12.0, gt=1, le=1e6, description="A spectral peak this strong is a screen's moiré."
    )


def _host_node() -> str:
    """This machine's host name, as a fleet node name may be spelt."""
    import re
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:64]
    return name if re.fullmatch(NODE_PATTERN, name) and name != "fleet" else "gate"


#: a fleet node's name: it is a topic level and the node's MQTT user name
NODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class FleetConfig(Section):
    """A fleet of gates on one broker (docs/fleet.md): one authority, any number of edges."""

    role: Literal["none", "authority", "edge"] = Field(
        "none",
        description="authority: where people, groups, rules and doors are managed and the "
        "log is collected; edge: follows the authority and forwards its log.",
    )
    node: str = Field(
        default_factory=_host_node,
        pattern=NODE_PATTERN,
        description="This node's name in the fleet (default: the host name).",
    )
    authority_key: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Edges: the authority's public key (gate fleet init prints it).",
    )
    topic_prefix: str = Field(
        "gate", min_length=1, pattern=r"^[^#+]+$", description="Fleet topics: <prefix>/fleet/..."
    )
    share_face_crops: bool = Field(
        False, description="Send face crops with the templates (default: embeddings only)."
    )
    heartbeat_s: float = Field(
        10.0, gt=0, le=3600, description="Edges: how often they say where they are."
    )
    resend_s: float = Field(
        5.0, gt=0, le=3600, description="Edges: an event not acknowledged in this is sent again."
    )

    @model_validator(mode="after")
    def _edges_know_the_authority(self) -> FleetConfig:
        if self.role == "edge" and self.authority_key is None:
            raise ValueError("an edge needs authority_key (gate fleet init on the authority)")
        if self.node == "fleet":
            raise ValueError("node 'fleet' would clash with the fleet's topics: choose another")
        return self


class GateConfig(Section):
    """The whole configuration."""

    database: Path | None = Field(None, description="SQLite file; default in the data dir.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    recognition: RecognitionConfig = Field(default_factory=RecognitionConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    enrollment: EnrollmentConfig = Field(default_factory=EnrollmentConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    site: SiteConfig = Field(default_factory=SiteConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    encoders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    matchers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    actuators: dict[str, dict[str, Any]] = Field(default_factory=dict)

    #: where this config came from, for error messages (not a setting)
    _origin: str = PrivateAttr("defaults")

    @model_validator(mode="before")
    @classmethod
    def _moved_sections(cls, data: Any) -> Any:
        if isinstance(data, dict) and "homeassistant" in data:
            raise ValueError(
                "[homeassistant] has moved: discovery_prefix and status_topic to "
                "[actuators.homeassistant], relock_s to [decision] relock_s, face_off_s to "
                "[decision] presence_off_s"
            )
        return data


def describe_errors(error: ValidationError, origin: str, prefix: str = "") -> str:
    """One line per problem: ``origin: key.path: message``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        elif item["type"] != "missing":
            message = f"{message} (got {item['input']!r})"
        lines.append(f"{origin}: {key or '(top level)'}: {message}")
    return "\n".join(lines)


def default_config_path() -> Path:
    """``gate.toml`` in the user's config directory."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("gate")) / "gate.toml"


def load_config(path: str | Path | None = None) -> GateConfig:
    """Read and validate a config file; defaults when there is none to read."""
    explicit = path is not None or bool(os.environ.get("GATE_CONFIG"))
    chosen = Path(path or os.environ.get("GATE_CONFIG") or default_config_path())
    if not chosen.exists():
        if explicit:
            raise ConfigError(f"{chosen}: no such config file")
        return GateConfig()
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: invalid TOML: {exc}") from None
    return parse_config(data, origin=str(chosen))


def parse_config(data: dict[str, Any], origin: str = "config") -> GateConfig:
    """Validate a config given as a dict (as TOML would load it)."""
    try:
        config = GateConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, origin)) from None
    config._origin = origin
    return config


def config_origin(config: GateConfig) -> str:
    """The file a config was read from, or ``defaults``."""
    return config._origin

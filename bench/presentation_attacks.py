"""Presentation attacks against the liveness baseline: APCER per attack type and BPCER.

Makes an attack set from the shared photos and clips, runs gate's real pipeline
(YuNet, the torch encoder, the door's face tracks) over it and over the real
clips, and judges every face track with ``gate_plugins.liveness`` at the moment
the door would grant it: when the track first holds ``confirm_frames`` good
views (every track is treated as a would-be grant, so the check sees exactly
the frames the door would hand it). A second decider with the site's real
gallery says which tracks recognition alone would have granted.

Bona fide presentations: every face track of ``video/hamilton_short.mp4`` and
``video/pedestrians_1080p.mp4`` (``bona_fide``), and of the same clips through
the attacks' camera model (``bona_fide_jpeg``: sensor noise, JPEG), so that no
cue can tell the attacks by their compression alone. Attack presentations,
each a face track of simulated camera frames (sensor noise, JPEG), one per
photo of an enrolled person (``video/hamilton_known``, ``people/face_recognition``,
``probes``, ``people/deepface`` (two per person), ``people/facenet_pytorch``, and
stills of the clip's two known people taken from the clip where they were granted):

* ``print_still``: the photo printed (duller, softer) and held still;
* ``print_hand``: the print held by a hand (small smooth shifts, turns, tilts);
* ``screen_still``: the photo shown on a screen and recaptured: the screen's
  pixel grid (aliased into moiré where it is fine, softened by defocus),
  gamma, a lifted black, refresh banding; on a stand;
* ``screen_hand``: the same screen held by a hand;
* ``video_replay``: the real clips played on a screen in front of the camera,
  looped (hamilton twice, the screen moved between the loops);
* ``photo_zoom``: gate's own demo clip (``gate/samples/door.mp4``): photos
  slowly zoomed, as a photo brought towards the camera.

ISO/IEC 30107-3: APCER (per attack type) is the share of that type's attack
presentations classified bona fide; BPCER the share of bona fide presentations
classified as attacks. The first run caches the tracks (``--cache``, about 15
minutes on 2 cores); later runs only judge them again.

    python bench/presentation_attacks.py [--data ../shared/data] [--cache /tmp/pad.pkl]
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gate.components import Match
from gate.config import DecisionConfig, LivenessConfig, parse_config
from gate.plugins import make_plugin_manager
from gate.policy.liveness import TrackFrame
from gate.recognition.enrollment import enroll
from gate.recognition.images import cv2, face_region, list_images, read_image
from gate.recognition.pipeline import Pipeline
from gate.runtime.decisions import DoorDecider
from gate.storage.database import GateDB
from gate_plugins.liveness import cues, judge

FPS = 25.0
FRAMES = 20  # frames per simulated photo presentation (0.8 s)
KEEP = 30  # frames kept per track (gate's history holds 30)
SAMPLE = Path(__file__).resolve().parent.parent / "gate" / "samples" / "door.mp4"
TYPES = ("print_still", "print_hand", "screen_still", "screen_hand", "video_replay", "photo_zoom")


@dataclass
class Presentation:
    """One face track: its frames from the start (up to 30) and when the door judged it."""

    kind: str  # "bona_fide" or an attack type
    source: str
    frames: list[TrackFrame]  # the track's first frames
    judged: list[TrackFrame]  # what the hook would see at the first judgement
    granted: str | None = None  # whom the real gallery granted it as, if anyone
    at_grant: list[TrackFrame] = field(default_factory=list)  # what the hook saw then


@dataclass
class Collector:
    """Runs two deciders over the same recognitions: every track a would-be grant, and
    the real gallery's judgement."""

    pipeline: Pipeline
    names: dict[int, str]
    kind: str
    source: str
    presentations: list[Presentation] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids = itertools.count(1)

        def always(fused, spread, views):
            person = next(ids)  # a new person each time: no cooldown between tracks
            return Match("match", person, person, 0.0, float("inf")), 1.0

        def real(fused, spread, views):
            return self.pipeline.judge(fused, views, spread=spread)

        def crop(image, rec):
            return face_region(image, rec.face, pad=0.3, face_px=96)[0]

        self.every = DoorDecider(DecisionConfig(), always, crop=crop)
        self.real = DoorDecider(DecisionConfig(), real, crop=crop)
        self.frames: dict[int, list[TrackFrame]] = {}
        self.judged: dict[int, list[TrackFrame]] = {}
        self.grants: dict[int, tuple[str, list[TrackFrame]]] = {}

    def observe(self, clock: float, image: np.ndarray) -> list:
        """Recognise one frame and feed both deciders; returns the real grants' outcomes."""
        recognitions = self.pipeline.recognise(image)
        for outcome in self.every.observe(recognitions, clock, image):
            self.judged.setdefault(outcome.track, list(outcome.history))
        for track in self.every.tracker.tracks:
            kept = self.frames.setdefault(track.id, [])
            if track.last_seen == clock and track.history and len(kept) < KEEP:
                kept.append(track.history[-1])
        granted = [
            o for o in self.real.observe(recognitions, clock, image) if o.decision == "granted"
        ]
        for outcome in granted:
            self._credit(outcome)
        return granted

    def _credit(self, outcome) -> None:
        """Give a real grant to the would-be-grant track with the same last face box."""
        last = outcome.history[-1].face.box if outcome.history else None
        for track in self.every.tracker.tracks:
            if track.history and track.history[-1].face.box == last:
                name = self.names.get(outcome.match.person_id, "?")
                self.grants.setdefault(track.id, (name, list(outcome.history)))

    def finish(self) -> list[Presentation]:
        """The tracks that reached a judgement, as presentations."""
        self.every.finish(float("inf"))
        out = []
        for track_id, judged in sorted(self.judged.items()):
            name, frames = self.grants.get(track_id, (None, []))
            out.append(
                Presentation(self.kind, self.source, self.frames[track_id], judged, name, frames)
            )
        return out


def present(pipeline: Pipeline, names, kind: str, source: str, frames: Iterable) -> list:
    """The presentations of one sequence of ``(clock, image)``."""
    collector = Collector(pipeline, names, kind, source)
    for clock, image in frames:
        collector.observe(clock, image)
    return collector.finish()


def clip_frames(path: Path, loops: int = 1) -> Iterator[tuple[float, int, np.ndarray]]:
    """Every frame of a clip, ``loops`` times over: ``(clock, loop, frame)``."""
    cv = cv2()
    index = 0
    for loop in range(loops):
        capture = cv.VideoCapture(str(path))
        fps = capture.get(cv.CAP_PROP_FPS) or FPS
        while True:
            ok, image = capture.read()
            if not ok:
                break
            yield index / fps, loop, image
            index += 1
        capture.release()


# --- the camera, the print, the screen ---------------------------------------------------------


def camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a camera makes of a scene: sensor noise, then JPEG (like the clips' compression)."""
    noisy = image.astype(np.float32) + rng.normal(0.0, 2.0, image.shape).astype(np.float32)
    _, data = cv2().imencode(".jpg", np.clip(noisy, 0, 255).astype(np.uint8), [1, 85])
    return cv2().imdecode(data, 1)


def wall(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plain, slightly uneven wall behind the presentation."""
    w, h = size
    texture = cv2().GaussianBlur(rng.normal(0, 6, (h, w)).astype(np.float32), (0, 0), 3)
    shade = np.linspace(-12, 12, h, dtype=np.float32)[:, None] + texture
    base = np.array([150, 165, 175], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    return np.clip(base[None, None, :] + shade[..., None], 0, 255).astype(np.float32)


def printed(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A print of a photo: lower contrast, a lifted black, a paper tint, softer."""
    p = photo.astype(np.float32) / 255.0
    p = p ** rng.uniform(0.9, 1.2)
    p = 0.08 + 0.82 * p
    grey = p.mean(axis=2, keepdims=True)
    p = grey + rng.uniform(0.75, 0.95) * (p - grey)
    p *= np.array([0.96, 0.99, 1.02], np.float32)
    return cv2().GaussianBlur(p * 255.0, (0, 0), rng.uniform(0.5, 1.0))


def placement(face_box, size, rng, face_px: tuple[float, float] = (100, 150)) -> np.ndarray:
    """A homography putting the photo's face near the middle of the camera view."""
    x, y, w, h = face_box
    s = rng.uniform(*face_px) / max(h, 1.0)
    angle = np.deg2rad(rng.uniform(-4, 4))
    cx, cy = size[0] / 2 + rng.uniform(-50, 50), size[1] / 2 + rng.uniform(-30, 30)
    c, si = np.cos(angle) * s, np.sin(angle) * s
    fx, fy = x + w / 2, y + h / 2
    return np.array([[c, -si, cx - c * fx + si * fy], [si, c, cy - si * fx - c * fy], [0, 0, 1]])


def hand(n: int, rng: np.random.Generator, centre) -> list[np.ndarray]:
    """Small smooth motions of a hand-held sheet or phone: shifts, turns, scale and tilt."""
    t = np.arange(n) / FPS
    out = []
    params = []
    for amplitude in (5.0, 5.0, np.deg2rad(1.5), 0.02, 2e-5, 2e-5):
        freqs = rng.uniform(0.5, 3.0, 2)
        phases = rng.uniform(0, 2 * np.pi, 2)
        wave = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True))
        params.append(amplitude * wave / 2)
    cx, cy = centre
    for dx, dy, rot, scale, px, py in zip(*params, strict=True):
        c, s = np.cos(rot) * (1 + scale), np.sin(rot) * (1 + scale)
        about = np.array([[c, -s, cx - c * cx + s * cy + dx], [s, c, cy - s * cx - c * cy + dy],
                          [px, py, 1 - px * cx - py * cy]])  # fmt: skip
        out.append(about)
    return out


@dataclass
class Screen:
    """A phone or monitor showing the content, as the camera sees it."""

    pitch: float  # the screen's pixel pitch in content pixels
    contrast: float  # how dark the gaps between the screen's pixels are
    gamma: float
    black: float
    defocus: float  # camera pixels
    band: float  # refresh banding amplitude
    band_period: float  # rows
    band_speed: float  # cycles per second
    k: int = 4  # rendering oversampling
    _grid: tuple = ()

    @classmethod
    def random(cls, rng: np.random.Generator, content_scale: float, k: int = 4) -> Screen:
        """A screen whose pixels are 0.55-1.5 camera pixels apart: the camera's pixels
        average the grid away, except what aliases (moiré) and what defocus spares."""
        low = 0.55 if k >= 4 else 0.7
        return cls(
            pitch=rng.uniform(low, 1.5) / content_scale,
            contrast=rng.uniform(0.2, 0.6),
            gamma=rng.uniform(0.8, 1.25),
            black=rng.uniform(4, 14),
            defocus=rng.uniform(0.2, 0.6),
            band=rng.uniform(0.02, 0.06),
            band_period=rng.uniform(40, 140),
            band_speed=rng.uniform(2, 12),
            k=k,
        )

    def _layout(self, shape, matrix, size):
        """Where the screen lies (a box of the camera view) and its subpixel grid there."""
        key = matrix.tobytes()
        if self._grid and self._grid[0] == key:
            return self._grid[1:]
        h, w = shape
        corners = matrix @ np.array([[0, w, w, 0], [0, 0, h, h], [1, 1, 1, 1]], np.float64)
        xs, ys = corners[0] / corners[2], corners[1] / corners[2]
        x0, y0 = max(0, int(xs.min()) - 4), max(0, int(ys.min()) - 4)
        x1, y1 = min(size[0], int(np.ceil(xs.max())) + 4), min(size[1], int(np.ceil(ys.max())) + 4)
        k = self.k
        big = np.diag([k, k, 1.0]) @ np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]]) @ matrix
        gy, gx = np.mgrid[0 : (y1 - y0) * k, 0 : (x1 - x0) * k].astype(np.float32) + 0.5
        inverse = np.linalg.inv(big).astype(np.float32)
        den = inverse[2, 0] * gx + inverse[2, 1] * gy + inverse[2, 2]
        u = (inverse[0, 0] * gx + inverse[0, 1] * gy + inverse[0, 2]) / den
        v = (inverse[1, 0] * gx + inverse[1, 1] * gy + inverse[1, 2]) / den
        across = 1 - self.contrast * (1 + np.cos(2 * np.pi * u / self.pitch)) / 2
        down = 1 - self.contrast * (1 + np.cos(2 * np.pi * v / self.pitch)) / 2
        grid = across * down
        grid = (grid / grid.mean())[..., None]
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        self._grid = (key, (x0, y0, x1, y1), big, grid, inside)
        return self._grid[1:]

    def show(self, content, matrix, background, clock: float) -> np.ndarray:
        """The scene: ``content`` on this screen placed by ``matrix`` in front of ``background``."""
        cv = cv2()
        h, w = background.shape[:2]
        (x0, y0, x1, y1), big, grid, inside = self._layout(content.shape[:2], matrix, (w, h))
        k = self.k
        shown = 255.0 * (content.astype(np.float32) / 255.0) ** self.gamma
        shown = self.black + shown * (1 - self.black / 255.0) * 0.92
        region = ((x1 - x0) * k, (y1 - y0) * k)
        lit = cv.warpPerspective(shown, big, region, flags=cv.INTER_LINEAR) * grid
        patch = cv.resize(background[y0:y1, x0:x1], region, interpolation=cv.INTER_NEAREST)
        patch[inside] = lit[inside]
        patch = cv.GaussianBlur(patch, (0, 0), self.defocus * k)
        scene = background.copy()
        scene[y0:y1, x0:x1] = cv.resize(patch, (x1 - x0, y1 - y0), interpolation=cv.INTER_AREA)
        rows = np.arange(h, dtype=np.float32)[:, None, None]
        wave = np.sin(2 * np.pi * (rows / self.band_period + clock * self.band_speed))
        return np.clip(scene * (1 + self.band * wave), 0, 255)


def print_scene(sheet, matrix, background) -> np.ndarray:
    """The scene: a print placed by ``matrix`` in front of ``background``."""
    cv = cv2()
    h, w = background.shape[:2]
    warped = cv.warpPerspective(sheet, matrix, (w, h), flags=cv.INTER_AREA)
    inside = cv.warpPerspective(np.ones(sheet.shape[:2], np.float32), matrix, (w, h)) > 0.5
    scene = background.copy()
    scene[inside] = warped[inside]
    return scene


def photo_attack(kind: str, photo: np.ndarray, face_box, seed: int) -> Iterator:
    """``(clock, frame)`` of one simulated photo presentation of type ``kind``."""
    rng = np.random.default_rng(seed)
    size = (640, 480)
    background = wall(size, rng)
    base = placement(face_box, size, rng)
    centre = base @ np.array([face_box[0] + face_box[2] / 2, face_box[1] + face_box[3] / 2, 1])
    moves = hand(FRAMES, rng, centre[:2] / centre[2]) if kind.endswith("hand") else None
    if kind.startswith("print"):
        sheet = printed(photo, rng)
    else:
        screen = Screen.random(rng, content_scale=float(np.sqrt(abs(np.linalg.det(base[:2, :2])))))
    for i in range(FRAMES):
        matrix = moves[i] @ base if moves is not None else base
        clock = i / FPS
        if kind.startswith("print"):
            scene = print_scene(sheet, matrix, background)
        else:
            scene = screen.show(photo, matrix, background, clock)
        yield clock, camera(scene, rng)


def replay(path: Path, loops: int, seed: int, size=(960, 540), zoom: float = 1.0) -> Iterator:
    """``(clock, frame)`` of a clip played on a screen in front of the camera, looped; the
    screen is moved (and changes focus) between loops. ``zoom`` > 1: the camera sees only the
    middle of the screen."""
    rng = np.random.default_rng(seed)
    background = wall(size, rng)
    current = None
    for clock, loop, image in clip_frames(path, loops):
        if current != loop:
            current = loop
            h, w = image.shape[:2]
            s = zoom * min(size[0] / w, size[1] / h) * rng.uniform(0.95, 1.05)
            angle = np.deg2rad(rng.uniform(-3, 3))
            c, si = np.cos(angle) * s, np.sin(angle) * s
            cx, cy = size[0] / 2, size[1] / 2
            matrix = np.array([[c, -si, cx - c * w / 2 + si * h / 2],
                               [si, c, cy - si * w / 2 - c * h / 2], [0, 0, 1]])  # fmt: skip
            screen = Screen.random(rng, content_scale=s, k=3)
        yield clock, camera(screen.show(image, matrix, background, clock), rng)


# --- the attack set and the bona fide tracks ---------------------------------------------------


def largest_face(pipeline: Pipeline, image: np.ndarray):
    faces = pipeline.detector.detect(image)
    return max(faces, key=lambda f: f.size) if faces else None


def photos(data: Path) -> list[tuple[str, Path, str]]:
    """``(label, path, gallery)`` of every photo of an enrolled person the attacks show."""
    people = data / "people"
    out = [(f"hamilton_known/{p.name}", p, "hamilton")
           for p in list_images(data / "video" / "hamilton_known")]  # fmt: skip
    for folder in sorted((people / "face_recognition").iterdir()):
        out += [(f"face_recognition/{p.name}", p, "photos") for p in list_images(folder)]
    out += [
        (f"probes/{p.name}", p, "photos") for p in list_images(data / "probes" / "face_recognition")
    ]
    for folder in sorted((people / "deepface").iterdir()):
        out += [(f"deepface/{p.name}", p, "photos") for p in list_images(folder)[:2]]
    for folder in sorted((people / "facenet_pytorch").iterdir()):
        out += [(f"facenet_pytorch/{p.name}", p, "photos") for p in list_images(folder)]
    return out


def galleries(data: Path) -> dict[str, dict[str, list[Path]]]:
    """Who is enrolled at each door: the clip's two known people; the photo sets' people."""
    people = data / "people"
    photo_people = {
        f"{s}-{d.name}": list_images(d)
        for s in ("face_recognition", "deepface", "facenet_pytorch")
        for d in sorted((people / s).iterdir())
        if d.is_dir()
    }
    known = data / "video" / "hamilton_known"
    return {"hamilton": {p.stem: [p] for p in list_images(known)}, "photos": photo_people}


def fit_photo(image: np.ndarray, box, face_px: float = 250.0):
    """The photo shrunk so its face is at most ``face_px`` tall, and the face box with it."""
    scale = min(1.0, face_px / max(box[3], 1.0))
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2().resize(image, size, interpolation=cv2().INTER_AREA)
    return image, tuple(v * scale for v in box)


def collect(data: Path, threads: int) -> list[Presentation]:
    """Every presentation: the real clips' tracks and the attacks'."""
    import torch

    torch.set_num_threads(threads)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    registry = make_plugin_manager(entry_points=False).registry
    config = parse_config({"pipeline": {"actuators": ["log"]}})
    base = Pipeline(config, registry)
    doors: dict[str, tuple[Pipeline, dict[int, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for door, folders in galleries(data).items():
            db = GateDB(Path(tmp) / f"{door}.db")
            for name, paths in folders.items():
                enroll(db, base, name, paths, skip_refused=True)
            pipeline = Pipeline(config, registry)
            pipeline.encoder, pipeline.detector = base.encoder, base.detector
            pipeline.load_templates(db)
            doors[door] = (pipeline, db.names())
            db.close()
    say(f"enrolled: {', '.join(f'{d} {len(n)} people' for d, (_, n) in doors.items())}")
    video = data / "video"
    out: list[Presentation] = []
    stills = []
    for clip in (video / "hamilton_short.mp4", video / "pedestrians_1080p.mp4"):
        collector = Collector(*doors["hamilton"], "bona_fide", clip.name)
        recaptured = Collector(*doors["hamilton"], "bona_fide_jpeg", clip.name)
        rng = np.random.default_rng(3)
        for clock, _, image in clip_frames(clip):
            recaptured.observe(clock, camera(image, rng))
            for outcome in collector.observe(clock, image):
                who = doors["hamilton"][1].get(outcome.match.person_id)
                stills.append(
                    (
                        f"{clip.stem}@{clock:.1f}s/{who}",
                        image,
                        outcome.history[-1].face.box,
                        "hamilton",
                    )
                )
        out += collector.finish() + recaptured.finish()
        say(f"{clip.name}: {len(out)} bona fide tracks so far")
    shown = []
    for label, path, door in photos(data):
        pixels = read_image(path).pixels
        face = largest_face(base, pixels)
        if face is not None:
            shown.append((label, *fit_photo(pixels, face.box), door))
    shown += [(label, *fit_photo(image, box), door) for label, image, box, door in stills]
    say(f"{len(shown)} photos to present")
    for i, (label, image, box, door) in enumerate(shown):
        for j, kind in enumerate(TYPES[:4]):
            out += present(*doors[door], kind, label, photo_attack(kind, image, box, 1000 * i + j))
        if i % 10 == 9:
            say(f"{i + 1} photos presented")
    replays = (
        ("hamilton_short.mp4", 2, (960, 540), 1.0),
        ("pedestrians_1080p.mp4", 1, (1280, 720), 1.5),
    )
    for name, loops, size, zoom in replays:
        clip = video / name
        frames = replay(clip, loops, seed=7, size=size, zoom=zoom)
        out += present(*doors["hamilton"], "video_replay", f"{clip.name} x{loops}", frames)
        say(f"replayed {clip.name}")
    frames = ((c, im) for c, _, im in clip_frames(SAMPLE))
    out += present(*doors["photos"], "photo_zoom", SAMPLE.name, frames)
    say("done")
    return out


# --- judging ------------------------------------------------------------------------------------


def seen(p: Presentation, frames: int | None = None) -> list[TrackFrame] | None:
    """What the check sees: the frames at the first judgement, or the first ``frames``."""
    if frames is None:
        return p.judged
    return p.frames[:frames] if len(p.frames) >= frames else None


def windows(p: Presentation, size: int) -> list[list[TrackFrame]]:
    """Every run of ``size`` frames along the track (the check at any moment of it)."""
    return [p.frames[i : i + size] for i in range(len(p.frames) - size + 1)]


def decide(cue: tuple[int, float, float], chosen: LivenessConfig) -> bool:
    """An attack? (``judge``'s rule, on cues computed once, for the sweeps.)"""
    frames, motion, screen = cue
    return frames < chosen.min_frames or motion < chosen.min_motion or screen > chosen.max_screen


def cue(frames: list[TrackFrame]) -> tuple[int, float, float]:
    return (len(frames), *cues(frames)) if len(frames) >= 2 else (len(frames), 0.0, 0.0)


def error_rates(cued: dict[str, list], chosen: LivenessConfig) -> dict[str, tuple[int, int]]:
    """``(errors, presentations)`` per kind: bona fide called attacks, attacks called bona fide."""
    out = {}
    for kind, values in cued.items():
        attacks = [decide(c, chosen) for c in values]
        errors = sum(attacks) if kind.startswith("bona_fide") else len(attacks) - sum(attacks)
        out[kind] = (errors, len(values))
    return out


def percent(errors: int, total: int) -> str:
    return f"{100 * errors / total:.1f}% ({errors}/{total})" if total else "-"


def report(presentations: list[Presentation], chosen: LivenessConfig) -> None:
    """The tables of docs/security.md, "Presentation attacks"."""
    kinds = ["bona_fide", "bona_fide_jpeg", *TYPES]
    by_kind = {k: [p for p in presentations if p.kind == k] for k in kinds}
    print(f"shipped thresholds: min_frames {chosen.min_frames}, min_motion {chosen.min_motion}, "
          f"max_screen {chosen.max_screen}\n")  # fmt: skip
    print("| presentations | tracks | frames at judgement (median, range) | error |")
    print("|---|---|---|---|")
    verdicts = {k: [judge(seen(p), chosen) for p in ps] for k, ps in by_kind.items()}
    for kind in kinds:
        ps = by_kind[kind]
        if not ps:
            continue
        judged = [len(p.judged) for p in ps]
        attacks = sum(v.attack for v in verdicts[kind])
        bona = kind.startswith("bona_fide")
        errors = attacks if bona else len(ps) - attacks
        name = "BPCER" if bona else "APCER"
        print(f"| {kind} | {len(ps)} | {np.median(judged):.0f} ({min(judged)}-{max(judged)}) "
              f"| {name} {percent(errors, len(ps))} |")  # fmt: skip
    bona = by_kind["bona_fide"] + by_kind["bona_fide_jpeg"]
    live = [w for p in bona for w in windows(p, len(p.judged))]
    flagged = sum(judge(w, chosen).attack for w in live)
    print(
        f"\nbona fide, every window of a track's judged length: BPCER {percent(flagged, len(live))}"
    )

    print("\nreal grants (the site's gallery): before -> after the check")
    for kind in kinds:
        granted = [p for p in by_kind[kind] if p.granted]
        if not by_kind[kind]:
            continue
        kept = [p for p in granted if not judge(p.at_grant, chosen).attack]
        names = sorted({p.granted for p in granted})
        print(f"  {kind}: {len(granted)}/{len(by_kind[kind])} granted -> {len(kept)} "
              f"({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})")  # fmt: skip

    print("\nwhy the bona fide tracks were denied:")
    for p, v in zip(bona, verdicts["bona_fide"] + verdicts["bona_fide_jpeg"], strict=True):
        if v.attack:
            print(f"  {p.kind} {p.source} ({len(p.judged)} frames): {v.reason}")

    cued = {k: [cue(seen(p)) for p in ps] for k, ps in by_kind.items() if ps}
    print("\nsweep of min_motion (max_screen as shipped): BPCER, then APCER per type")
    header = " | ".join(k for k in cued)
    print(f"| min_motion | {header} |\n|---|{'---|' * len(cued)}")
    for value in (0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2):
        rates = error_rates(cued, chosen.model_copy(update={"min_motion": value}))
        print(f"| {value} | " + " | ".join(percent(*rates[k]) for k in cued) + " |")
    print(f"\n| max_screen | {header} |\n|---|{'---|' * len(cued)}")
    for value in (10.0, 11.0, 12.0, 14.0, 17.0, 20.0, 1e6):
        rates = error_rates(cued, chosen.model_copy(update={"max_screen": value}))
        print(f"| {value:g} | " + " | ".join(percent(*rates[k]) for k in cued) + " |")
    print(f"\nframes seen (the first N of every track with N): \n| N | {header} |")
    print(f"|---|{'---|' * len(cued)}")
    for frames in (3, 5, 8, 12, 20, 30):
        at = {k: [cue(f) for p in ps if (f := seen(p, frames)) is not None]
              for k, ps in by_kind.items() if ps}  # fmt: skip
        rates = error_rates(at, chosen)
        print(f"| {frames} | " + " | ".join(percent(*rates[k]) for k in cued) + " |")

    print("\ncues (median [min, max]) at the first judgement:")
    for kind, values in cued.items():
        m = np.array([c[1] for c in values])
        sc = np.array([c[2] for c in values])
        print(f"  {kind}: motion {np.median(m):.3f} [{m.min():.3f}, {m.max():.3f}], "
              f"screen {np.median(sc):.1f} [{sc.min():.1f}, {sc.max():.1f}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, help="keep the tracks here; judge them again later")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.cache and args.cache.exists():
        presentations = pickle.loads(args.cache.read_bytes())
    else:
        presentations = collect(args.data, args.threads)
        if args.cache:
            args.cache.write_bytes(pickle.dumps(presentations))
    report(presentations, LivenessConfig())


if __name__ == "__main__":
    main()

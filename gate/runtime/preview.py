"""``gate run --preview``: each door's frames with faces, names, distances and decisions, live.

A small web page on 127.0.0.1 (another address only when asked): ``/`` shows every door
and refreshes its picture several times a second, ``/door/<name>.jpg`` is the latest
annotated frame, ``/door/<name>.mjpg`` the same as an MJPEG stream (for VLC and the like),
``/status.json`` each door's frame count and last decision. Frames are drawn only while
someone watches, at most ``fps`` a second per door, so an unwatched preview costs nearly
nothing.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import unquote

import numpy as np

from gate.recognition.annotate import Label, draw
from gate.recognition.images import cv2

if TYPE_CHECKING:
    from gate.recognition.pipeline import Recognition
    from gate.storage.events import AccessEvent

logger = logging.getLogger("gate.preview")

#: how long a decision stays written across the top of the picture
DECISION_SHOWN_S = 3.0
#: a viewer that asked for a frame this recently counts as watching
WATCHING_S = 5.0


@dataclass
class _Door:
    """What the page shows of one door."""

    frames: int = 0
    jpeg: bytes | None = None
    drawn_at: float = float("-inf")
    decision: str = ""
    decided_at: float = float("-inf")
    reader: str = ""
    updated: threading.Condition = field(default_factory=threading.Condition)


def labels_of(recognitions: list[Recognition], names: dict[int, str]) -> list[Label]:
    """A label per face: name and distance, or why it is not a match."""
    out = []
    for rec in recognitions:
        match = rec.match
        if match is None:
            continue
        limit = "" if rec.threshold is None else f"threshold {rec.threshold:.3f}"
        if match.status == "match":
            who = names.get(match.person_id, f"#{match.person_id}")
            lines = (f"{who} {match.distance:.3f}", limit)
        elif match.status in ("unknown", "ambiguous"):
            near = names.get(match.candidate_id, "") if match.candidate_id is not None else ""
            nearest = f"nearest {near} {match.distance:.3f}" if near else ""
            lines = (match.status, nearest, limit)
        else:
            lines = (match.status.replace("_", " "),)
        out.append(Label(rec.face, match.status, tuple(line for line in lines if line)))
    return out


def banner(image: np.ndarray, text: str, granted: bool) -> None:
    """Write ``text`` across the top of ``image`` (in place), green or red."""
    cv = cv2()
    height = max(24, image.shape[0] // 14)
    colour = (40, 150, 40) if granted else (40, 40, 200)
    cv.rectangle(image, (0, 0), (image.shape[1], height), colour, -1)
    scale = height / 34
    cv.putText(
        image, text, (8, int(height * 0.72)), cv.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
        max(1, int(scale * 2)), cv.LINE_AA,
    )  # fmt: skip


class Preview:
    """Serves the doors' annotated frames; :meth:`frame` is called by each door's loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8089, fps: float = 10.0):
        self.host, self.port, self.fps = host, port, fps
        self._doors: dict[str, _Door] = {}
        self._lock = threading.Lock()
        self._watched_at = float("-inf")
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> str:
        """Listen (a busy port is an error that says so); returns the page's address."""
        preview = self

        class Handler(_Handler):
            owner = preview

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            from gate.errors import ConfigError

            raise ConfigError(
                f"preview cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                "choose another --preview-port"
            ) from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, name="gate-preview", daemon=True
        ).start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def door(self, name: str) -> _Door:
        """The page's state of door ``name`` (a door shows on the page once it is known)."""
        with self._lock:
            return self._doors.setdefault(name, _Door())

    def frame(
        self,
        door: str,
        image: np.ndarray,
        recognitions: list[Recognition],
        names: dict[int, str],
        events: list[AccessEvent],
    ) -> None:
        """One frame of ``door`` with its faces and the decisions it brought."""
        state = self.door(door)
        now = time.monotonic()
        for event in events:
            who = event.person or "stranger"
            state.decision = f"{event.decision} {who} ({event.reason})"
            state.decided_at = now
        with state.updated:
            state.frames += 1
            watched = now - self._watched_at < WATCHING_S
            due = now - state.drawn_at >= 1.0 / self.fps
            if not (due and (watched or state.jpeg is None)):
                return
            state.drawn_at = now
        picture = draw(image, labels_of(recognitions, names))
        if now - state.decided_at < DECISION_SHOWN_S:
            banner(picture, state.decision, state.decision.startswith("granted"))
        ok, data = cv2().imencode(".jpg", picture, [cv2().IMWRITE_JPEG_QUALITY, 80])
        if ok:
            with state.updated:
                state.jpeg = data.tobytes()
                state.updated.notify_all()

    def reader(self, door: str, text: str) -> None:
        """A line shown under ``door`` (an actuator's news: what a panel asked of its reader)."""
        self.door(door).reader = text

    def watched(self) -> None:
        self._watched_at = time.monotonic()

    def status(self) -> dict:
        with self._lock:
            doors = dict(self._doors)
        return {
            name: {"frames": door.frames, "decision": door.decision, "reader": door.reader}
            for name, door in doors.items()
        }


class _Handler(BaseHTTPRequestHandler):
    owner: Preview

    def log_message(self, format: str, *args) -> None:
        logger.debug("preview: " + format, *args)

    def do_GET(self) -> None:
        path = unquote(self.path.split("?", 1)[0])
        preview = self.owner
        if path == "/":
            return self._send(200, "text/html; charset=utf-8", _page(preview).encode())
        if path == "/status.json":
            return self._send(200, "application/json", json.dumps(preview.status()).encode())
        if path.startswith("/door/"):
            name, _, kind = path[len("/door/") :].rpartition(".")
            with preview._lock:
                state = preview._doors.get(name)
            if state is None:
                return self._send(404, "text/plain", b"no such door\n")
            preview.watched()
            if kind == "jpg":
                with state.updated:
                    stale = time.monotonic() - state.drawn_at > 2.0 / preview.fps
                    if state.jpeg is None or stale:  # nobody watched: wait for a fresh one
                        state.updated.wait(2.0)
                    jpeg = state.jpeg
                if jpeg is None:
                    return self._send(503, "text/plain", b"no frame yet\n")
                return self._send(200, "image/jpeg", jpeg)
            if kind == "mjpg":
                return self._stream(state)
        return self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, state: _Door) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        last = None
        try:
            while self.owner._server is not None:
                self.owner.watched()
                with state.updated:
                    if state.jpeg is last:
                        state.updated.wait(1.0)
                    jpeg = state.jpeg
                if jpeg is None or jpeg is last:
                    continue
                last = jpeg
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return


def _page(preview: Preview) -> str:
    doors = sorted(preview.status())
    cards = "\n".join(
        f'<figure data-door="{html.escape(d)}"><img alt="door {html.escape(d)}">'
        f'<figcaption>{html.escape(d)}: <span class="frames">0</span> frames, '
        f'<span class="decision"></span><br><span class="reader"></span></figcaption></figure>'
        for d in doors
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gate: live view</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}}
figure{{display:inline-block;margin:0 1em 1em 0}}img{{max-width:560px;display:block}}</style>
</head><body><h1>gate: live view</h1>{cards or "<p>no door has sent a frame yet</p>"}
<script>
async function tick() {{
  try {{
    const status = await (await fetch("/status.json", {{cache: "no-store"}})).json();
    for (const fig of document.querySelectorAll("figure")) {{
      const door = status[fig.dataset.door];
      if (!door) continue;
      fig.querySelector(".frames").textContent = door.frames;
      fig.querySelector(".decision").textContent = door.decision;
      fig.querySelector(".reader").textContent = door.reader;
      fig.querySelector("img").src = "/door/" + encodeURIComponent(fig.dataset.door)
        + ".jpg?n=" + door.frames;
    }}
  }} catch (e) {{}}
  setTimeout(tick, 200);
}}
tick();
</script></body></html>
"""

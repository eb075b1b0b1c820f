"""The wire to an access-control panel and the OSDP reader (peripheral device) on it.

A door's ``channel`` is a serial device (an RS-485 adapter such as
``/dev/ttyUSB0``; a pty works the same), ``tcp://HOST:PORT`` (gate connects, as
to a serial-to-Ethernet converter) or ``tcp-listen://HOST:PORT`` (the panel
connects to gate). A wire that fails is reopened every second; what is wrong
is kept in :attr:`Wire.problem` and logged once per change. The protocol,
Secure Channel included, is libosdp's (:class:`osdp.PeripheralDevice`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import termios
import threading
import time
import tty
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from osdp import (
    Capability,
    CardFormat,
    Channel,
    Command,
    Event,
    LibFlag,
    LogLevel,
    PDCapabilities,
    PdId,
    PDInfo,
    PeripheralDevice,
)

from gate.actions.credentials import Credential

logger = logging.getLogger("gate.osdp")

#: how long a wire that failed waits before it is opened again
RETRY_S = 1.0
#: how often the link's state is looked at, and how long a state must hold to be reported
WATCH_S = 0.1
STEADY_S = 0.5
BAUDS = {9600, 19200, 38400, 57600, 115200, 230400}
LED_COLOURS = ("off", "red", "green", "amber", "blue", "magenta", "cyan", "white")


SOM = 0x53  # every OSDP packet starts with it
REPLY_RAW, REPLY_KEYPAD = 0x50, 0x53  # a card read, keys pressed
CTRL_SQN, CTRL_CRC, CTRL_SCB = 0x03, 0x04, 0x08


def crc16(data: bytes) -> int:
    """OSDP's CRC-16 (CCITT polynomial 0x1021, MSB first, from 0x1D0F)."""
    crc = 0x1D0F
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frames(buffer: bytearray) -> list[bytes]:
    """The whole packets at the front of ``buffer``, taken out of it (a partial one stays)."""
    out = []
    while True:
        start = buffer.find(bytes([SOM]))
        if start < 0:
            buffer.clear()
            return out
        del buffer[:start]
        if len(buffer) < 4:
            return out
        length = buffer[2] | buffer[3] << 8
        if not 7 <= length <= 1440:
            del buffer[:1]
            continue
        if len(buffer) < length:
            return out
        out.append(bytes(buffer[:length]))
        del buffer[:length]


def intact(frame: bytes) -> bool:
    """Whether the packet's CRC (or checksum) holds."""
    if frame[4] & CTRL_CRC:
        return crc16(frame[:-2]) == frame[-2] | frame[-1] << 8
    return (sum(frame[:-1]) + frame[-1]) & 0xFF == 0


def code_of(frame: bytes) -> int:
    """A packet's command or reply code (after its security block, when it has one)."""
    return frame[5 + frame[5]] if frame[4] & CTRL_SCB else frame[5]


class Acks:
    """Whether the panel took the reader's last card read or keys, by OSDP's sequence numbers:
    the panel's next command with the next number acknowledges the reply; the same number
    asks for it again; anything else (0: the panel started over) means it was lost.

    A reply given up on (:meth:`withdraw`) is never repeated: asked for again with its number
    after gate stopped waiting, the reader stays silent rather than send the read late."""

    def __init__(self):
        self.done = threading.Event()
        self.taken: bool | None = None
        self._seq: int | None = None
        self._withdrawn: int | None = None

    def expect(self) -> None:
        self._seq, self.taken, self._withdrawn = None, None, None
        self.done.clear()

    def withdraw(self) -> None:
        if self.taken is None:
            self._withdrawn = self._seq

    def sent(self, frame: bytes) -> None:
        if code_of(frame) in (REPLY_RAW, REPLY_KEYPAD) and self.taken is None:
            self._seq = frame[4] & CTRL_SQN

    def withheld(self, frame: bytes) -> bool:
        """Whether ``frame`` repeats a withdrawn reply (and must not go out)."""
        return (
            self._withdrawn is not None
            and code_of(frame) in (REPLY_RAW, REPLY_KEYPAD)
            and frame[4] & CTRL_SQN == self._withdrawn
        )

    def heard(self, frame: bytes) -> None:
        number = frame[4] & CTRL_SQN
        if self._withdrawn is not None and number != self._withdrawn:
            self._withdrawn = None  # the panel moved on
        if self._seq is None or self.taken is not None or number == self._seq:
            return
        self.taken = number == self._seq % 3 + 1
        self.done.set()


def parse_channel(text: str) -> tuple[str, str, int]:
    """``(kind, host or path, port)``: kind ``serial``, ``tcp`` or ``tcp-listen``."""
    for kind in ("tcp-listen", "tcp"):
        prefix = f"{kind}://"
        if text.startswith(prefix):
            host, sep, port = text[len(prefix) :].rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{text!r}: use {prefix}HOST:PORT")
            return kind, host.strip("[]"), int(port)
    if not text.startswith("/"):
        raise ValueError(
            f"{text!r}: a serial device path (/dev/ttyUSB0), tcp://HOST:PORT or "
            "tcp-listen://HOST:PORT"
        )
    return "serial", text, 0


class Wire(Channel):
    """A byte stream that libosdp polls: never blocks, reopens itself after a failure."""

    def __init__(self, spec: str, baud: int = 9600):
        super().__init__()
        self.spec, self.baud = spec, baud
        self.kind, self.target, self.port = parse_channel(spec)
        self.problem: str | None = "not opened yet"
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._server: socket.socket | None = None
        self._retry_at = 0.0
        self.address = 0x7F
        self.acks = Acks()
        self._heard, self._said = bytearray(), bytearray()

    # libosdp's side ---------------------------------------------------------------------

    def read(self, max_bytes: int) -> bytes:
        if not self._ready():
            return b""
        try:
            data = (
                os.read(self._fd, max_bytes) if self._fd is not None else self._sock.recv(max_bytes)
            )
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            self._lost(exc.strerror or str(exc))
            return b""
        if not data and self._sock is not None:
            self._lost("the other end closed the connection")
        self._heard += data
        for frame in frames(self._heard):
            if frame[1] in (self.address, 0x7F) and intact(frame):
                self.acks.heard(frame)
        return data

    def write(self, buf: bytes) -> int:
        if not self._ready():
            return 0
        self._said += buf
        replies = frames(self._said)
        if any(self.acks.withheld(frame) for frame in replies):
            return len(buf)  # a withdrawn card read, asked for again: silence, never late
        for frame in replies:
            self.acks.sent(frame)
        try:
            if self._fd is not None:
                return os.write(self._fd, buf)
            return self._sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._lost(exc.strerror or str(exc))
            return 0

    def flush(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                termios.tcflush(self._fd, termios.TCIFLUSH)

    # opening and losing -------------------------------------------------------------------

    def listen(self) -> None:
        """Bind a ``tcp-listen`` channel now, so that a port in use is an error at start."""
        if self.kind != "tcp-listen" or self._server is not None:
            return
        server = socket.socket(socket.AF_INET6 if ":" in self.target else socket.AF_INET)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((self.target, self.port))
        except OSError as exc:
            server.close()
            raise OSError(f"{self.spec}: cannot listen: {exc.strerror or exc}") from None
        server.listen(1)
        server.setblocking(False)
        self._server = server

    def try_open(self) -> None:
        """Bind a listening channel, or open a serial one and close it again: raises why not
        (``gate doctor``; a TCP connection is only tried by the reader itself)."""
        self.listen()
        if self.kind == "serial":
            self._open()
            self.close_stream()

    def _ready(self) -> bool:
        if self._server is not None:
            self._accept()  # a panel that reconnects replaces its old connection
        if self._fd is not None or self._sock is not None:
            return True
        if time.monotonic() < self._retry_at or self.kind == "tcp-listen":
            return False
        try:
            self._open()
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return False
        self._settle(None)
        return True

    def _open(self) -> None:
        if self.kind == "serial":
            self._fd = open_serial(self.target, self.baud)
            return
        sock = socket.create_connection((self.target, self.port), timeout=1.0)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def _accept(self) -> None:
        try:
            sock, peer = self._server.accept()
        except (BlockingIOError, InterruptedError):
            if self._sock is None:
                self._settle("waiting for the panel to connect")
            return
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return
        if self._sock is not None:
            self._sock.close()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        logger.info("%s: the panel connected from %s", self.spec, peer[0])
        self._settle(None)

    def _lost(self, why: str) -> None:
        self.close_stream()
        self._failed(why)

    def _failed(self, why: str) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        self._settle(why)

    def _settle(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem is None:
                logger.info("%s: open", self.spec)
            else:
                logger.warning("%s: %s", self.spec, problem)
        self.problem = problem

    def close_stream(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self.close_stream()
        if self._server is not None:
            self._server.close()
            self._server = None


def open_serial(path: str, baud: int) -> int:
    """``path`` raw at ``baud``, 8N1, non-blocking, held exclusively (a second gate, or
    ``gate doctor`` while gate runs, gets 'in use')."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(errno.EBUSY, "in use by another process (a running gate?)") from None
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCEXCL)
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        speed = getattr(termios, f"B{baud}")
        attrs[2] = (attrs[2] & ~(termios.PARENB | termios.CSTOPB | termios.CRTSCTS)) | (
            termios.CS8 | termios.CLOCAL | termios.CREAD
        )
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        termios.tcflush(fd, termios.TCIOFLUSH)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class LinkState:
    """What the reader knows of its panel."""

    online: bool  # the panel polls the reader
    secure: bool  # in a Secure Channel session
    problem: str | None  # why the wire is not open

    def usable(self, secure_required: bool) -> bool:
        """A card read would reach the panel (online; in Secure Channel when required)."""
        return self.problem is None and self.online and (self.secure or not secure_required)

    def describe(self, secure_required: bool) -> str:
        if self.problem:
            return f"no link: {self.problem}"
        if not self.online:
            return "no poll from the panel"
        if self.secure:
            return "panel online, secure channel active"
        if secure_required:
            return "panel online, NO secure channel (the panel's key differs, or it has none)"
        return "panel online, without secure channel"


def describe_command(command: dict[str, Any]) -> tuple[str, str]:
    """``(kind, words)`` for a command from the panel: ``("led", "LED 0 green ...")``."""
    kind = command.get("command")
    if kind == Command.LED:
        colour = LED_COLOURS[command.get("on_color", 0) % len(LED_COLOURS)]
        what = "temporarily" if command.get("temporary") else "steady"
        blink = "" if not command.get("off_count") else ", blinking"
        return "led", f"LED {command.get('led_number', 0)} {colour} ({what}{blink})"
    if kind == Command.Buzzer:
        if not command.get("on_count"):
            return "buzzer", "buzzer off"
        times = command.get("rep_count") or "continuous"
        return "buzzer", f"buzzer x{times} ({command['on_count'] * 100} ms on)"
    if kind == Command.Text:
        return "text", f"text {command.get('data', '')!r}"
    if kind == Command.Output:
        return "output", f"output {command.get('output_no')} control {command.get('control_code')}"
    if kind == Command.Keyset:
        return "keyset", "a new secure channel key"
    return "command", f"command {kind}"


class ReaderLink:
    """One door's OSDP reader: the peripheral device on its wire, watched and used by gate.

    ``secure``: Secure Channel required (card reads only inside it). ``scbk``:
    the door's key; ``install``: take a key from the panel (SCBK-D), only by
    ``gate osdp install``. ``on_command(command)`` hears every command from the
    panel (return False to refuse it); ``on_state(state)`` every change of
    :class:`LinkState`.
    """

    def __init__(
        self,
        door: str,
        wire: Wire,
        address: int,
        *,
        scbk: bytes | None,
        secure: bool = True,
        install: bool = False,
        on_command: Callable[[dict[str, Any]], bool] = lambda command: True,
        on_state: Callable[[LinkState], None] = lambda state: None,
        verbose: bool = False,
    ):
        self.door, self.wire, self.address, self.secure = door, wire, address, secure
        wire.address = address
        self.on_command, self.on_state = on_command, on_state
        flags = [LibFlag.EnforceSecure] if secure and not install else []
        if install:
            flags.append(LibFlag.InstallMode)
        caps = PDCapabilities(
            [
                (Capability.CardDataFormat, 1, 1),
                (Capability.LEDControl, 1, 1),
                (Capability.AudibleControl, 1, 1),
                (Capability.TextOutput, 1, 1),
                (Capability.CommunicationSecurity, 1, 1),
            ]
        )
        # what the panel's reader list shows: no vendor code of gate's own (OUI 0), a serial
        # number of the door's name, so that each door's reader tells itself apart
        ident = PdId(1, 1, 0, zlib.crc32(door.encode()), 1)
        info = PDInfo(
            address, wire, scbk=None if install else scbk, flags=flags, name=door, id=ident
        )
        self.pd = PeripheralDevice(
            info, caps, log_level=LogLevel.Debug if verbose else LogLevel.Error
        )
        self.pd.set_command_handler(self._command)
        self.pd.set_event_completion_handler(self._completed)
        self.state = LinkState(False, False, wire.problem)
        self._sending = threading.Lock()
        self._done = threading.Event()
        self._status: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Open the wire (a listening port now) and answer the panel in threads of their own."""
        self.wire.listen()
        pd = self.pd
        pd.event, pd.lock = threading.Event(), threading.Lock()
        pd.thread = threading.Thread(
            target=pd.refresh,
            args=(pd.event, pd.lock, pd.ctx),
            daemon=True,
            name=f"gate-osdp-{self.door}",
        )
        watcher = threading.Thread(target=self._watch, daemon=True, name=f"gate-osdp-{self.door}-w")
        self._threads = [pd.thread, watcher]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        if self.pd.thread is not None:
            self.pd.stop()
        for thread in self._threads[1:]:
            thread.join(2)
        self.wire.close()

    def now(self) -> LinkState:
        """The link's state as libosdp and the wire have it this moment."""
        ctx = self.pd.ctx
        return LinkState(ctx.is_online(), ctx.is_sc_active(), self.wire.problem)

    def usable(self) -> bool:
        """A card read would reach the panel now (online; in Secure Channel when required)."""
        return self.now().usable(self.secure)

    def wait(self, until: Callable[[LinkState], bool], timeout: float) -> bool:
        """Whether the link came to a state ``until`` accepts within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until(self.now()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(WATCH_S / 2)
        return True

    def present(self, credential: Credential, expires_at: float) -> tuple[bool, str]:
        """A card read with ``credential``; ``(True, "")`` once the panel took it before
        ``expires_at`` (epoch seconds), else ``(False, why)`` with nothing left queued."""
        bits, data = credential.wiegand()
        event = {
            "event": Event.CardRead,
            "reader_no": 0,
            "direction": 0,
            "format": CardFormat.Wiegand,
            "length": bits,
            "data": data,
        }
        return self._submit(event, expires_at)

    def keypad(self, digits: str, expires_at: float) -> tuple[bool, str]:
        """Keys pressed on the reader (``0``-``9``, ``*``, ``#``)."""
        data = bytes(ord(c) for c in digits)
        return self._submit({"event": Event.KeyPress, "reader_no": 0, "data": data}, expires_at)

    def _submit(self, event: dict[str, Any], expires_at: float) -> tuple[bool, str]:
        with self._sending:
            if not self.usable():
                return False, self.now().describe(self.secure)
            self._done.clear()
            self._status = None
            self.wire.acks.expect()
            with self.pd.lock:
                if not self.pd.ctx.submit_event(event):
                    return False, "libosdp refused the event"
            sent = self._done.wait(max(0.0, expires_at - time.time())) and self._status == 0
            acked = sent and self.wire.acks.done.wait(max(0.0, expires_at - time.time()))
            if acked and self.wire.acks.taken and time.time() < expires_at:
                return True, ""
            with self.pd.lock:  # never sent late: what the panel did not take is dropped
                self.pd.ctx.flush_events()
                self.wire.acks.withdraw()
            if acked:
                return False, "the panel did not acknowledge it (lost on the wire)"
            if sent:
                return False, "sent, but the panel did not acknowledge it in time"
            return False, f"the panel did not take it ({self.now().describe(self.secure)})"

    def _completed(self, event: dict[str, Any], status: int) -> None:
        self._status = status
        self._done.set()

    def _command(self, command: dict[str, Any]) -> tuple[int, None]:
        try:
            ok = self.on_command(command)
        except Exception:
            logger.exception("door %s: handling a command from the panel failed", self.door)
            ok = False
        return (0 if ok else -1), None

    def _watch(self) -> None:
        """Report each state that holds for :data:`STEADY_S` (not the steps of a handshake)."""
        seen, since = self.state, time.monotonic()
        while not self._stop.wait(WATCH_S):
            state = self.now()
            if state != seen:
                seen, since = state, time.monotonic()
            if state != self.state and time.monotonic() - since >= STEADY_S:
                self.report(state)

    def report(self, state: LinkState) -> None:
        """Take ``state`` as the link's and tell ``on_state``."""
        self.state = state
        try:
            self.on_state(state)
        except Exception:
            logger.exception("door %s: reporting the link state failed", self.door)

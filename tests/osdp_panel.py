"""A real OSDP control panel for the tests: libosdp's ControlPanel on the other end of a pty pair
or a TCP connection, with a tap that can corrupt or replay frames on the wire."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
import tty
from dataclasses import dataclass, field

from osdp import Channel, ControlPanel, Event, LibFlag, LogLevel, PDInfo

from gate_plugins.osdp_link import REPLY_RAW, code_of, frames

__all__ = ["REPLY_RAW", "Panel", "PtyEnd", "Tap", "TcpEnd", "code_of"]

ADDRESS = 101
TEST_KEY = bytes(range(16))
CMD_LED = 0x69


@dataclass
class Tap:
    """What passes between panel and reader, seen from the panel: whole frames each way, and
    tricks to play on the next ones."""

    from_reader: list[bytes] = field(default_factory=list)
    to_reader: list[bytes] = field(default_factory=list)
    corrupt_reply: int | None = None  # flip a bit in the next reply with this code
    corrupted: int = 0
    replay_to_reader: bytes | None = None  # send this old frame again after the next command
    replay_to_panel: bytes | None = None  # hand the panel this old reply instead of the next
    _in: bytearray = field(default_factory=bytearray)
    _out: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Forget partial frames (a new panel starts on the wire)."""
        with self.lock:
            self._in.clear()
            self._out.clear()

    def incoming(self, data: bytes) -> bytes:
        """Bytes from the reader, as the panel will read them."""
        if not data:
            return data
        with self.lock:
            self._in += data
            whole = frames(self._in)
            out = b""
            for frame in whole:
                self.from_reader.append(frame)
                if self.corrupt_reply is not None and code_of(frame) == self.corrupt_reply:
                    self.corrupt_reply = None
                    self.corrupted += 1
                    frame = frame[:-3] + bytes([frame[-3] ^ 0x01]) + frame[-2:]
                elif self.replay_to_panel is not None:
                    frame, self.replay_to_panel = self.replay_to_panel, None
                out += frame
            return out

    def outgoing(self, data: bytes) -> bytes:
        """Bytes from the panel, as the reader will get them."""
        with self.lock:
            self._out += data
            for frame in frames(self._out):
                self.to_reader.append(frame)
            if self.replay_to_reader is not None:
                data, self.replay_to_reader = data + self.replay_to_reader, None
            return data


class PtyEnd(Channel):
    """The panel's end of a pty pair (gate opens the other end, a /dev/pts path, as serial)."""

    def __init__(self, tap: Tap):
        super().__init__()
        self.tap = tap
        self.fd, slave = os.openpty()
        self.path = os.ttyname(slave)
        tty.setraw(self.fd)
        tty.setraw(slave)
        os.set_blocking(self.fd, False)
        self._slave = slave  # kept open so that the pty lives while gate reopens it

    def read(self, max_bytes: int) -> bytes:
        try:
            return self.tap.incoming(os.read(self.fd, max_bytes))
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def write(self, buf: bytes) -> int:
        os.write(self.fd, self.tap.outgoing(bytes(buf)))
        return len(buf)

    def flush(self) -> None:
        pass

    def drain(self) -> None:
        """Drop what the reader said to the panel before this one, and partial frames."""
        with contextlib.suppress(OSError):
            while os.read(self.fd, 4096):
                pass
        self.tap.reset()

    def close(self) -> None:
        for fd in (self.fd, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class TcpEnd(Channel):
    """The panel connecting to gate's ``tcp-listen://`` reader; :meth:`drop` pulls the cable
    until :meth:`restore`."""

    def __init__(self, port: int, tap: Tap):
        super().__init__()
        self.port, self.tap = port, tap
        self.sock: socket.socket | None = None
        self.down = False

    def _connected(self) -> bool:
        if self.sock is None and not self.down:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                self.sock.setblocking(False)
            except OSError:
                self.sock = None
        return self.sock is not None

    def read(self, max_bytes: int) -> bytes:
        if not self._connected():
            return b""
        try:
            data = self.sock.recv(max_bytes)
        except BlockingIOError:
            return b""
        except OSError:
            self._close_socket()
            return b""
        return self.tap.incoming(data)

    def write(self, buf: bytes) -> int:
        if not self._connected():
            return len(buf)  # lost on the floor, as on a cut wire
        try:
            self.sock.send(self.tap.outgoing(bytes(buf)))
        except OSError:
            self._close_socket()
        return len(buf)

    def flush(self) -> None:
        pass

    def drop(self) -> None:
        self.down = True
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.drop()


class Panel:
    """libosdp's control panel, polling one reader at :data:`ADDRESS` with ``key``."""

    def __init__(self, channel: Channel, key: bytes | None = TEST_KEY, secure: bool = True):
        flags = [LibFlag.EnforceSecure] if secure else []
        if hasattr(channel, "drain"):
            channel.drain()
        self.channel = channel
        self.cp = ControlPanel(
            [PDInfo(ADDRESS, channel, scbk=key, flags=flags)], log_level=LogLevel.Emergency
        )
        self.cp.start()

    def secure(self, timeout: float = 10.0) -> bool:
        return self._until(lambda: self.cp.is_sc_active(ADDRESS), timeout)

    def online(self, timeout: float = 10.0) -> bool:
        return self._until(lambda: self.cp.is_online(ADDRESS), timeout)

    @staticmethod
    def _until(check, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return False

    def card_reads(self, wait: float) -> list[dict]:
        """Every card read the panel reports within ``wait`` seconds (from now)."""
        got = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            event = self.cp.get_event(ADDRESS, timeout=0.1)
            if event and event.get("event") in (Event.CardRead, Event.KeyPress):
                got.append(event)
        return got

    def command(self, command: dict) -> None:
        assert self.cp.submit_command(ADDRESS, command)

    def close(self) -> None:
        if self.cp.thread is not None:
            self.cp.teardown()

"""Signed door messages: the canonical form, its HMAC-SHA256, and the per-door keys.

A signed message is the canonical JSON of its fields (keys sorted, no
whitespace, ASCII only) with ``,"sig":"<64 hex>"`` put before the closing
brace, where ``sig`` is the HMAC-SHA256 of the canonical bytes under the door's
key. The key is 64 hex characters and is used as that text (its 64 ASCII
bytes), so a controller can take it as it is. ``docs/security.md`` has the
details a controller in C needs. Standard library only (plus platformdirs):
the door controller imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gate.errors import ConfigError, GateError

SIG_HEAD = b',"sig":"'
#: bytes a signature adds to the canonical JSON: ``,"sig":"`` + 64 hex + ``"}``
SIG_TAIL = len(SIG_HEAD) + 64 + 2
KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(rb"[0-9a-f]{64}")

logger = logging.getLogger("gate.keys")


class KeyStoreError(GateError):
    """A key that cannot be read, written or trusted; the message says which and why."""


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, ``,`` and ``:`` without spaces, ASCII."""
    if "sig" in fields:
        raise ValueError("a message to sign must not have a 'sig' field")
    text = json.dumps(
        dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def signature(key: str, data: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``data`` under ``key`` (the key's text as bytes)."""
    return hmac.new(key.encode("ascii"), data, hashlib.sha256).hexdigest()


def seal(fields: Mapping[str, Any], key: str) -> bytes:
    """``fields`` as a signed message: the canonical JSON with ``sig`` added at its end."""
    body = canonical(fields)
    return body[:-1] + SIG_HEAD + signature(key, body).encode("ascii") + b'"}'


def unseal(payload: bytes) -> tuple[bytes, str] | None:
    """Split a signed message into the canonical bytes and the signature; None if unsigned."""
    if len(payload) <= SIG_TAIL or not payload.endswith(b'"}'):
        return None
    head, tail = payload[:-SIG_TAIL], payload[-SIG_TAIL:]
    sig = tail[len(SIG_HEAD) : -2]
    if not tail.startswith(SIG_HEAD) or not _HEX64.fullmatch(sig):
        return None
    return head + b"}", sig.decode("ascii")


def new_key() -> str:
    """A fresh door key: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(32)


def new_nonce() -> str:
    """A random 128-bit nonce as 32 hex characters."""
    return secrets.token_hex(16)


def next_sequence(last: int) -> int:
    """The next sequence number: above ``last`` and never below the clock in epoch seconds.

    Following the clock keeps numbers rising even if a counter file is lost,
    and keeps them within 32 bits (until 2106) for small controllers.
    """
    return max(last + 1, int(time.time()))


def read_key(path: Path, chars: int = 64) -> str:
    """A key file's key; refused when others may read the file or it holds no key."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyStoreError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"{path}: cannot read the key: {exc}") from None
    if os.name == "posix" and mode & 0o077:
        raise KeyStoreError(
            f"{path}: others may read this key (mode {mode & 0o777:o}); chmod 600 it, "
            "and rotate the key if it may have leaked"
        )
    if not re.fullmatch(f"[0-9a-f]{{{chars}}}", text):
        raise KeyStoreError(f"{path}: not a gate key ({chars} lower-case hex characters)")
    return text


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, readable by its owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def keys_folder(config, db_path: str | Path | None = None) -> Path:
    """``[actuators.mqtt] keys_dir``, else ``keys`` beside the database."""
    option = (config.actuators.get("mqtt") or {}).get("keys_dir")
    if option is not None:
        if not isinstance(option, str) or not option:
            raise ConfigError("actuators.mqtt.keys_dir: a folder path is needed")
        return Path(option).expanduser()
    if db_path is None:
        from platformdirs import user_data_dir

        # gate.storage.database.default_db_path, without importing the database (and numpy)
        db_path = config.database or Path(user_data_dir("gate")) / "gate.db"
    return Path(db_path).parent / "keys"


class KeyStore:
    """One key file per door (0600) in a folder of its own (0700), with its last sequence number.

    Signing takes a lock on the folder, so that ``gate run`` and ``gate doors
    unlock`` never give two commands for a door the same number.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _stem(self, door: str) -> str:
        stem = quote(door, safe="")
        return "%2E" + stem[1:] if stem.startswith(".") else stem

    def path(self, door: str) -> Path:
        """The key file of ``door``."""
        return self.folder / f"{self._stem(door)}.key"

    def scbk_path(self, door: str) -> Path:
        """The OSDP Secure Channel Base Key file of ``door``."""
        return self.folder / f"{self._stem(door)}.scbk"

    def scbk(self, door: str, *, create: bool = False) -> bytes:
        """``door``'s OSDP Secure Channel Base Key; with ``create``, a new one when it has none."""
        path = self.scbk_path(door)
        if create and not path.exists():
            self._made(path, secrets.token_hex(16))
        if not path.exists():
            raise KeyStoreError(
                f"door {door!r} has no OSDP secure channel key ({path}): gate doors key "
                f"{door} --osdp makes one to enter in the panel, or gate osdp install {door} "
                "takes the panel's"
            )
        return bytes.fromhex(read_key(path, chars=32))

    def set_scbk(self, door: str, key: bytes | None = None) -> bytes:
        """Keep ``key`` (a new random one when None) as ``door``'s Secure Channel Base Key."""
        key = secrets.token_bytes(16) if key is None else key
        if len(key) != 16:
            raise KeyStoreError(f"an OSDP secure channel key has 16 bytes, not {len(key)}")
        with self._locked():
            self._write(self.scbk_path(door), key.hex())
        return key

    def _seq_path(self, door: str) -> Path:
        return self.folder / f"{self._stem(door)}.seq"

    def _ensure_folder(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.name == "posix" and self.folder.stat().st_mode & 0o077:
                os.chmod(self.folder, 0o700)
        except OSError as exc:
            raise KeyStoreError(f"{self.folder}: cannot use the key folder: {exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_folder()
        if os.name != "posix":
            yield
            return
        import fcntl

        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def key(self, door: str, *, create: bool = False) -> str:
        """The key of ``door``; with ``create``, a new one when the door has none yet."""
        path = self.path(door)
        if not path.exists():
            if not create:
                raise KeyStoreError(f"door {door!r} has no key yet ({path}): gate doors key {door}")
            if self._made(path, new_key()):
                logger.warning(
                    "door %s had no key: made one in %s; its controller needs it "
                    "(gate doors key %s)", door, path, door,
                )  # fmt: skip
        return read_key(path)

    def _made(self, path: Path, key: str) -> bool:
        """Write ``key`` to ``path`` unless a key is there (under the folder's lock); whether
        it did."""
        with self._locked():
            if path.exists():
                return False
            self._write(path, key)
            return True

    def rotate(self, door: str) -> str:
        """Give ``door`` a new key; commands signed with the old one fail from now on."""
        key = new_key()
        with self._locked():
            self._write(self.path(door), key)
        return key

    def _write(self, path: Path, key: str) -> None:
        try:
            write_private(path, key + "\n")
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot write the key: {exc}") from None

    def next_seq(self, door: str) -> int:
        """Reserve the next sequence number of ``door`` (kept on disk across restarts)."""
        path = self._seq_path(door)
        with self._locked():
            try:
                last = int(path.read_text(encoding="ascii").strip() or 0)
            except FileNotFoundError:
                last = 0
            except (OSError, ValueError) as exc:
                raise KeyStoreError(f"{path}: unreadable sequence number: {exc}") from None
            seq = next_sequence(last)
            try:
                write_private(path, f"{seq}\n")
            except OSError as exc:
                raise KeyStoreError(f"{path}: cannot write the sequence number: {exc}") from None
        return seq

    def sign(self, door: str, fields: Mapping[str, Any]) -> bytes:
        """``fields`` with the next ``seq`` and a fresh ``nonce``, signed with the door's key.

        A door without a key gets one here: a controller that lacks it refuses
        the command, so nothing opens until someone installs the key.
        """
        key = self.key(door, create=True)
        return seal({**fields, "seq": self.next_seq(door), "nonce": new_nonce()}, key)

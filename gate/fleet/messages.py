"""Signed fleet messages: the authority's Ed25519 key, the signed form, and the topics.

A fleet message is the canonical JSON of its fields (as door commands are, see
:func:`gate.actions.signing.canonical`) with ``,"sig":"<128 hex>"`` put before
the closing brace: the Ed25519 signature of ``gate-fleet-v1`` and a newline
followed by the canonical bytes. Only the authority holds the private key;
every edge holds the public one, so no edge can sign what the authority did
not (a shared HMAC key would let any node that holds it forge the authority).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gate.actions.signing import KeyStoreError, canonical, read_key, write_private
from gate.errors import GateError

#: what every signature covers before the message, so it means nothing elsewhere
DOMAIN = b"gate-fleet-v1\n"
#: the objects the authority publishes, each on a topic of its own
KINDS = ("person", "group", "rule", "door")
#: the authority's private key, in the key folder
KEY_FILE = "fleet-authority.key"
#: the fleet messages' format version
FORMAT = 1

_SIG_HEAD = b',"sig":"'
_SIG_TAIL = len(_SIG_HEAD) + 128 + 2


class FleetError(GateError):
    """A fleet setting, key or state that does not allow the command; the message says why."""


class Refused(GateError):
    """A message that is not the authority's, or not one gate can use: the reason."""


def require_broker(config) -> None:
    """A fleet's nodes meet on a broker they all reach: refuse the embedded one."""
    if config.mqtt.host is None:
        raise FleetError(
            "a fleet needs a broker every node reaches: set [mqtt] host "
            "(the embedded broker listens on loopback only)"
        )


def key_path(keys_dir: Path) -> Path:
    return Path(keys_dir) / KEY_FILE


def ensure_authority_key(keys_dir: Path) -> tuple[str, bool]:
    """The authority's public key, and whether the key pair was made now (the private key
    0600 in ``keys_dir``). An existing key is kept: replacing it would cut every edge off."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = key_path(keys_dir)
    if path.exists():
        return Signer.from_folder(keys_dir).public, False
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, Ed25519PrivateKey.generate().private_bytes_raw().hex() + "\n")
    except OSError as exc:
        raise FleetError(f"{path}: cannot write the authority's key: {exc}") from None
    return Signer.from_folder(keys_dir).public, True


class Signer:
    """Signs fleet messages with the authority's private key (64 hex characters)."""

    def __init__(self, private_hex: str):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
        #: the public key, 64 hex characters, for the edges' ``[fleet] authority_key``
        self.public = self._key.public_key().public_bytes_raw().hex()

    @classmethod
    def from_folder(cls, keys_dir: Path) -> Signer:
        """The authority's key from its file; refused when missing or readable by others."""
        path = key_path(keys_dir)
        if not path.exists():
            raise FleetError(f"{path}: no authority key yet: gate fleet init")
        try:
            return cls(read_key(path))
        except KeyStoreError as exc:
            raise FleetError(str(exc)) from None

    def seal(self, fields: Mapping[str, Any]) -> bytes:
        """``fields`` as a signed message."""
        body = canonical({"fleet": FORMAT, **fields})
        signature = self._key.sign(DOMAIN + body).hex().encode("ascii")
        return body[:-1] + _SIG_HEAD + signature + b'"}'


class Verifier:
    """Opens messages that the authority signed, and nothing else."""

    def __init__(self, public_hex: str):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))

    def open(self, payload: bytes, expected_type: str) -> dict[str, Any]:
        """The fields of a signed message of ``expected_type``; :class:`Refused` otherwise."""
        from cryptography.exceptions import InvalidSignature

        if len(payload) <= _SIG_TAIL or not payload.endswith(b'"}'):
            raise Refused("not signed")
        head, tail = payload[:-_SIG_TAIL], payload[-_SIG_TAIL:]
        if not tail.startswith(_SIG_HEAD):
            raise Refused("not signed")
        body, signature = head + b"}", tail[len(_SIG_HEAD) : -2]
        try:
            self._key.verify(bytes.fromhex(signature.decode("ascii")), DOMAIN + body)
        except (InvalidSignature, ValueError, UnicodeDecodeError):
            raise Refused("bad signature: not signed by the authority's key") from None
        try:
            fields = json.loads(body)
        except ValueError:
            raise Refused("signed, but not JSON") from None
        if not isinstance(fields, dict) or fields.get("fleet") != FORMAT:
            raise Refused(f"signed, but not a fleet message of format {FORMAT}")
        if fields.get("type") != expected_type:
            raise Refused(f"a {fields.get('type')!r} message where a {expected_type!r} belongs")
        version = fields.get("version")
        if "version" in fields and (not isinstance(version, int) or version < 0):
            raise Refused(f"bad version {version!r}")
        return fields


class Topics:
    """The fleet's topics under ``<prefix>/fleet``."""

    def __init__(self, prefix: str):
        self.root = f"{prefix.rstrip('/')}/fleet"
        #: the newest version, its fingerprint and the number of objects (retained)
        self.head = f"{self.root}/head"
        #: every object message as published, in version order (not retained)
        self.changes = f"{self.root}/changes"

    def object(self, kind: str, key: str) -> str:
        """``<root>/<kind>/<key>`` (retained: the object's newest version or its tombstone)."""
        return f"{self.root}/{kind}/{quote(key, safe='') if key != '+' else key}"

    def events(self, node: str) -> str:
        """Where ``node`` sends its access events to the collector."""
        return f"{self.root}/events/{node}"

    def acks(self, node: str) -> str:
        """Where the collector acknowledges ``node``'s events."""
        return f"{self.root}/acks/{node}"

    def status(self, node: str) -> str:
        """Where ``node`` says which version it holds (retained)."""
        return f"{self.root}/status/{node}"

    def node_of(self, topic: str) -> str:
        """The last level of an events or status topic: the node that may write it."""
        return topic.rsplit("/", 1)[-1]

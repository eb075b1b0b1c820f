"""A person's panel credential: the card number (and its format) an access panel expects.

When a face is granted, an actuator may present the person's credential to an
access-control panel as if a card had been read (OSDP's raw card read carries
:meth:`Credential.wiegand`). Three formats:

- ``26bit`` (HID H10301): even parity, 8-bit facility code, 16-bit card number,
  odd parity;
- ``37bit`` (HID H10304): even parity, 16-bit facility code, 19-bit card
  number, odd parity;
- ``raw``: ``bits`` bits holding ``number`` as is, no parity added, for formats
  the panel knows and gate does not.

Written as text (``26bit:12:34567``, ``37bit:1234:56789``, ``raw:34:123456789``)
in the ``people.credential`` column and on the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gate.errors import GateError

Kind = Literal["26bit", "37bit", "raw"]

#: the fixed formats: bits in all, facility code bits, card number bits, HID's name
_FIXED: dict[str, tuple[int, int, int, str]] = {
    "26bit": (26, 8, 16, "H10301"),
    "37bit": (37, 16, 19, "H10304"),
}
_ALIASES = {"26bit": "26bit", "h10301": "26bit", "37bit": "37bit", "h10304": "37bit", "raw": "raw"}
MAX_RAW_BITS = 128
USAGE = "use 26bit:FACILITY:CARD, 37bit:FACILITY:CARD or raw:BITS:NUMBER"


class CredentialError(GateError):
    """A credential that cannot be used; the message says why and the range allowed."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Credential:
    """A card number in a panel's format; checked when made (:class:`CredentialError`).

    ``bits`` is the format's own width for ``26bit`` and ``37bit`` (the default
    26 is taken as 37 for ``37bit``); for ``raw`` it is 1 to 128.
    """

    kind: Kind
    number: int
    facility: int | None = None
    bits: int = 26

    def __post_init__(self) -> None:
        if self.kind in _FIXED:
            width, facility_bits, card_bits, _ = _FIXED[self.kind]
            if self.bits == 26 and width != 26:
                object.__setattr__(self, "bits", width)  # the default, not a choice
            if self.bits != width:
                raise CredentialError(f"a {self.kind} credential has {width} bits, not {self.bits}")
            if not _is_int(self.facility) or not 0 <= self.facility < 1 << facility_bits:
                raise CredentialError(f"facility code must be 0-{(1 << facility_bits) - 1}")
            if not _is_int(self.number) or not 0 <= self.number < 1 << card_bits:
                raise CredentialError(f"card number must be 0-{(1 << card_bits) - 1}")
        elif self.kind == "raw":
            if self.facility is not None:
                raise CredentialError("a raw credential has no facility code")
            if not _is_int(self.bits) or not 1 <= self.bits <= MAX_RAW_BITS:
                raise CredentialError(f"bit count must be 1-{MAX_RAW_BITS}")
            if not _is_int(self.number) or not 0 <= self.number < 1 << self.bits:
                raise CredentialError(
                    f"number must be 0-{(1 << self.bits) - 1} (it has {self.bits} bits)"
                )
        else:
            raise CredentialError(f"unknown format {self.kind!r}: {USAGE}")

    def __str__(self) -> str:
        """The canonical text, which :func:`parse_credential` reads back."""
        if self.kind == "raw":
            return f"raw:{self.bits}:{self.number}"
        return f"{self.kind}:{self.facility}:{self.number}"

    def value(self) -> int:
        """The Wiegand bits as one integer, first bit most significant, parity included."""
        if self.kind == "raw":
            return self.number
        width, _, card_bits, _ = _FIXED[self.kind]
        assert self.facility is not None  # checked when made
        payload = self.facility << card_bits | self.number  # bits 2 .. width-1
        half = (width - 2 + 1) // 2  # each parity covers this many payload bits
        leading = payload >> (width - 2 - half)  # bits 2 .. half+1: even parity
        trailing = payload & ((1 << half) - 1)  # bits width-half .. width-1: odd parity
        even = leading.bit_count() & 1
        odd = 1 - (trailing.bit_count() & 1)
        return even << (width - 1) | payload << 1 | odd

    def wiegand(self) -> tuple[int, bytes]:
        """``(bit count, bits)``: packed first bit first (MSB), the last byte padded with
        zero bits on the right; what OSDP's raw card read (osdp_RAW) carries."""
        size = (self.bits + 7) // 8
        return self.bits, (self.value() << (size * 8 - self.bits)).to_bytes(size, "big")

    def describe(self) -> str:
        """For people: ``26-bit H10301, facility 12, card 34567`` or ``raw 34-bit 123456789``."""
        if self.kind == "raw":
            return f"raw {self.bits}-bit {self.number}"
        width, _, _, name = _FIXED[self.kind]
        return f"{width}-bit {name}, facility {self.facility}, card {self.number}"


def _decimal(text: str, part: str, what: str, top: int) -> int:
    part = part.strip()
    if not re.fullmatch(r"[0-9]+", part) or len(part) > 40:
        raise CredentialError(f"{text!r}: {what} must be a decimal number 0-{top}")
    return int(part)


def parse_credential(text: str) -> Credential:
    """``26bit:FACILITY:CARD``, ``37bit:FACILITY:CARD`` or ``raw:BITS:NUMBER`` (decimal;
    ``h10301`` and ``h10304`` name the fixed formats too; case and spaces around ignored)."""
    text = text.strip()
    parts = text.split(":")
    if len(parts) != 3:
        raise CredentialError(f"{text!r}: {USAGE}")
    kind = _ALIASES.get(parts[0].strip().lower())
    if kind is None:
        raise CredentialError(f"{text!r}: unknown format {parts[0].strip()!r}: {USAGE}")
    try:
        if kind == "raw":
            bits = _decimal(text, parts[1], "bit count", MAX_RAW_BITS)
            number = _decimal(text, parts[2], "number", (1 << min(bits, MAX_RAW_BITS)) - 1)
            return Credential("raw", number, None, bits)
        width, facility_bits, card_bits, _ = _FIXED[kind]
        facility = _decimal(text, parts[1], "facility code", (1 << facility_bits) - 1)
        number = _decimal(text, parts[2], "card number", (1 << card_bits) - 1)
        return Credential(kind, number, facility, width)  # type: ignore[arg-type]
    except CredentialError as exc:
        message = str(exc)
        if message.startswith(repr(text)):
            raise
        raise CredentialError(f"{text!r}: {message}") from None

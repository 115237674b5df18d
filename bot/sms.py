"""SMS encoding and segment counting per GSM 03.38 / 3GPP TS 23.038 (pure, stdlib only).

Limits (3GPP TS 23.038 / TS 23.040): a single SMS carries 140 octets of user data, i.e.
160 GSM 7-bit septets or 70 UCS-2 (UTF-16) code units.  A concatenated SMS spends 6 octets
on the user data header (UDH), leaving 153 septets or 67 UTF-16 code units per segment.
An extension character is sent as ESC (0x1B) + char, costing 2 septets; that pair is never
split across segments, nor is a UTF-16 surrogate pair.

Empty text is reported as 0 units and 0 segments: nothing is sent.
Nothing is transliterated; characters outside both GSM tables force UCS-2 for the whole text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["GSM7_BASIC", "GSM7_EXTENSION", "SmsInfo", "analyse", "is_gsm7", "split_segments"]

# GSM 7-bit default alphabet, basic table, in code order 0x00..0x7F (TS 23.038 section 6.2.1).
# Position 0x1B is the escape to the extension table and is not a character (placeholder \x1b).
_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00-0x0F
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10-0x1F
    " !\"#¤%&'()*+,-./"  # 0x20-0x2F
    "0123456789:;<=>?"  # 0x30-0x3F
    "¡ABCDEFGHIJKLMNO"  # 0x40-0x4F
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50-0x5F
    "¿abcdefghijklmno"  # 0x60-0x6F
    "pqrstuvwxyzäöñüà"  # 0x70-0x7F
)
_ESC = 0x1B

# GSM 7-bit default alphabet extension table (TS 23.038 section 6.2.1.1), code -> character.
_EXTENSION_TABLE = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

GSM7_BASIC: frozenset[str] = frozenset(c for i, c in enumerate(_BASIC_TABLE) if i != _ESC)
GSM7_EXTENSION: frozenset[str] = frozenset(_EXTENSION_TABLE.values())

GSM7_SINGLE, GSM7_CONCAT = 160, 153  # septets
UCS2_SINGLE, UCS2_CONCAT = 70, 67  # UTF-16 code units

GSM7, UCS2 = "GSM-7", "UCS-2"


@dataclass(frozen=True)
class SmsInfo:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7, extension chars count 2) or UTF-16 code units (UCS-2)
    segments: int  # 0 for empty text
    ucs2_chars: tuple[str, ...]  # distinct characters that force UCS-2, first-seen order; () if none


def _septets(ch: str) -> int:
    return 2 if ch in GSM7_EXTENSION else 1


def _utf16_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _ucs2_chars(text: str) -> tuple[str, ...]:
    seen = dict.fromkeys(ch for ch in text if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION)
    return tuple(seen)


def _scheme(text: str) -> tuple[str, Callable[[str], int], int, int]:
    if is_gsm7(text):
        return GSM7, _septets, GSM7_SINGLE, GSM7_CONCAT
    return UCS2, _utf16_units, UCS2_SINGLE, UCS2_CONCAT


def _cut(text: str, cost: Callable[[str], int], single: int, concat: int) -> list[str]:
    if not text:
        return []
    if sum(map(cost, text)) <= single:
        return [text]
    pieces: list[str] = []
    start, used = 0, 0
    for i, ch in enumerate(text):
        c = cost(ch)  # a whole character (escape pair / surrogate pair) never straddles segments
        if used + c > concat:
            pieces.append(text[start:i])
            start, used = i, 0
        used += c
    pieces.append(text[start:])
    return pieces


def is_gsm7(text: str) -> bool:
    """Return True if every character is in the GSM 7-bit basic or extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def split_segments(text: str) -> list[str]:
    """Cut text into the pieces each SMS segment would carry ([] for empty text)."""
    _, cost, single, concat = _scheme(text)
    return _cut(text, cost, single, concat)


def analyse(text: str) -> SmsInfo:
    """Report the encoding, unit count, segment count and UCS-2-forcing characters of text."""
    encoding, cost, single, concat = _scheme(text)
    return SmsInfo(
        encoding=encoding,
        units=sum(map(cost, text)),
        segments=len(_cut(text, cost, single, concat)),
        ucs2_chars=_ucs2_chars(text) if encoding == UCS2 else (),
    )

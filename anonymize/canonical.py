"""Canonical byte strings of identifiers: what is hashed, so one person gets one
pseudonym however a device family encodes the id (docs/pseudonyms.md).

  IMEI          the 15 ASCII digits ("356307042441013")
  raw8          the 8 raw bytes, big-endian as on the wire (iButton, RFID, Dallas ids,
                BT MAC as User ID). 0 means "no key present": not a person, no pseudonym.
  ascii_concat  the parts' bytes joined in IO-id order (each fixed-size part as its
                big-endian bytes at its dictionary width, NX parts as they are), NULs
                and spaces removed, upper-cased: a tachograph card number split across
                IO 147/148 (or 195/196 on 64x) and a VIN give their printed text.
  iccid         str(ID11) + str(ID14) left-padded with zeros to 10 digits (the ICCID is
                split into two decimal halves; the pad restores the second half's
                leading zeros), as ASCII digits.
  raw           NX and other values as their bytes (hex text from JSON is un-hexed;
                a fixed-size integer as big-endian bytes at its dictionary width).

Values come as ints (fixed-size IO), bytes (NX) or lowercase hex strings (the decode
JSON contract for NX). None, 0 and empty mean "absent".
"""
from __future__ import annotations

from collections.abc import Sequence

from ..codecs.iodict import IdentifierGroup, io_spec

IoValue = int | bytes | bytearray | str | None


def canonical_imei(imei: str | int | bytes) -> bytes:
    if isinstance(imei, (bytes, bytearray)):
        s = bytes(imei).decode("ascii")
    elif isinstance(imei, int):
        s = f"{imei:015d}"
    else:
        s = str(imei)
    s = s.strip()
    if len(s) != 15 or not s.isdigit() or not s.isascii():
        raise ValueError("an IMEI is 15 ASCII digits")
    return s.encode("ascii")


def _as_bytes(v: IoValue, width: int) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        if v == 0:
            return None
        return v.to_bytes(max(width, (v.bit_length() + 7) // 8), "big")
    if isinstance(v, str):
        try:
            b = bytes.fromhex(v)
        except ValueError:
            b = v.encode("utf-8")
        return b or None
    b = bytes(v)
    return b or None


def canonical_raw8(v: IoValue) -> bytes | None:
    """8 big-endian bytes; None for an absent or zero value."""
    b = _as_bytes(v, 8)
    if b is None or not any(b):
        return None
    return b.rjust(8, b"\0") if len(b) < 8 else b


def canonical_ascii(parts: Sequence[IoValue], widths: Sequence[int]) -> bytes | None:
    joined = b"".join(p for p in (_as_bytes(v, w) for v, w in zip(parts, widths)) if p)
    text = joined.replace(b"\0", b"").replace(b" ", b"").upper()
    return text or None


def _as_int(v: IoValue) -> int:
    if v is None:
        return 0
    if isinstance(v, int):
        return int(v)
    return int.from_bytes(_as_bytes(v, 8) or b"", "big")


def canonical_iccid(part1: IoValue, part2: IoValue) -> bytes | None:
    a, b = _as_int(part1), _as_int(part2)
    if a == 0 and b == 0:
        return None
    return (str(a) + str(b).zfill(10)).encode("ascii")


def canonical_raw(v: IoValue, width: int = 8) -> bytes | None:
    return _as_bytes(v, width)


def group_widths(group: IdentifierGroup, family: str) -> tuple[int, ...]:
    out = []
    for i in group.ids:
        spec = io_spec(family, i)
        out.append(spec.size if spec and spec.size else 8)
    return tuple(out)


def canonical_group(group: IdentifierGroup, values: Sequence[IoValue], family: str = "FMB") -> bytes | None:
    """The canonical bytes of one identifier group's values (in `group.ids` order)."""
    c = group.canonical
    if c == "raw8":
        return canonical_raw8(values[0])
    if c == "ascii_concat":
        return canonical_ascii(values, group_widths(group, family))
    if c == "iccid":
        return canonical_iccid(values[0], values[1] if len(values) > 1 else None)
    if c == "raw":
        return canonical_raw(values[0], group_widths(group, family)[0])
    raise ValueError(f"unknown canonical form {c!r}")


def display_canonical(group: IdentifierGroup, canonical: bytes) -> str:
    """How a kept (not pseudonymised) identifier is shown: text where the form is
    text (card numbers, VIN, ICCID), uppercase hex otherwise (iButton as 16 hex digits)."""
    if group.canonical in ("ascii_concat", "iccid"):
        return canonical.decode("ascii", "replace")
    return canonical.hex().upper()

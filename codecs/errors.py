"""The one exception the codecs raise: blame (a reason code) and position (an offset)."""
from __future__ import annotations

from operator import index

# Reason codes, machine-readable; tools and the dead-letter topic carry them verbatim.
REASONS = frozenset({
    "crc_mismatch",         # CRC field differs from the CRC of the data field
    "truncated",            # the input ends before the structure it declares
    "trailing_bytes",       # bytes left over after a complete structure
    "bad_preamble",         # TCP data frame whose 4-byte preamble is not zero
    "bad_length",           # a length field that contradicts the structure
    "too_large",            # a declared length above the configured cap
    "count_mismatch",       # Number of Data 1 != 2, N total != sum of groups, ...
    "unknown_codec",        # codec id not one of 8, 0x8E, 16, 12-15
    "bad_generation_type",  # Codec 16 generation type > 7
    "bad_imei",             # IMEI not 15 ASCII digits (login, UDP, Codec 14/15 nibbles)
    "bad_priority",         # priority > 3
    "bad_value",            # a value that cannot be encoded / is out of range
    "duplicate_io",         # the same IO id twice in one record (cannot round-trip)
    "bad_message_type",     # GPRS message type not valid for its codec
    "empty",                # no bytes at all
})


class DecodeError(ValueError):
    """Bytes that are not a valid Teltonika frame.

    `reason` is one of REASONS; `offset` is the byte offset (from the start of the
    frame or datagram) where decoding failed.
    """

    __slots__ = ("reason", "offset", "detail")

    def __init__(self, reason: str, offset: int, detail: str = "") -> None:
        self.reason = reason
        self.offset = offset
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.reason, self.offset, self.detail))


class EncodeError(ValueError):
    """Values that cannot be put on the wire (out of range, too many records, ...)."""


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi (numpy integers welcome), else EncodeError naming it."""
    try:
        value = index(value)
    except TypeError:
        raise EncodeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise EncodeError(f"{name} {value} out of range {lo}..{hi}")
    return value

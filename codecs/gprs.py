"""Codec 12 / 13 / 14 / 15 GPRS messages (the part of the data field after Codec ID).

Inside a TCP data frame (tcp.py), big-endian (protocol notes 6):

  off  size  field
    9     1  quantity 1 (messages that follow; 1 in practice)
   10        per message:
               1  type   0x05 command, 0x06 response / Codec 14 ACK,
                         0x11 Codec 14 nACK, 0x0B Codec 15 message
               4  size S of the body
               S  body:  Codec 12  payload
                         Codec 13  timestamp u32 (s) + payload
                         Codec 14  IMEI (8 bytes, nibbles "0" + 15 digits) + payload
                         Codec 15  timestamp u32 (s) + IMEI (8 bytes) + payload
  end    1  quantity 2 (== quantity 1)

Lenient decoding of Codec 13 also reads the 8-byte millisecond timestamp of the widely
copied wiki example (protocol notes 9.1); the message then has timestamp_width 8.
"""
from __future__ import annotations

import struct

from .errors import DecodeError, EncodeError, check_int
from .packets import (CODEC_12, CODEC_13, CODEC_14, CODEC_15, MSG_CODEC15, MSG_COMMAND,
                      MSG_NACK, MSG_RESPONSE, GprsMessage)

_MSG_HEAD = struct.Struct(">BI")  # type u8, body size u32
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

TYPES = {
    CODEC_12: frozenset({MSG_COMMAND, MSG_RESPONSE}),
    CODEC_13: frozenset({MSG_COMMAND, MSG_RESPONSE}),  # the wiki changed 0x05 -> 0x06
    CODEC_14: frozenset({MSG_COMMAND, MSG_RESPONSE, MSG_NACK}),
    CODEC_15: frozenset({MSG_CODEC15}),
}
# Body bytes before the payload.
_PREFIX = {CODEC_12: 0, CODEC_13: 4, CODEC_14: 8, CODEC_15: 12}

# A plausible ms timestamp (2000-01-01 .. 2100-01-01) whose top 4 bytes, read as
# seconds, would be 1970: the 8-byte Codec 13 variant.
_MS_LO, _MS_HI = 946_684_800_000, 4_102_444_800_000


def decode_imei_nibbles(raw: bytes, pos: int) -> str:
    """8 bytes holding '0' + 15 decimal digits as nibbles (Codec 14/15)."""
    s = raw.hex()
    if s[0] != "0" or not s.isdigit():
        raise DecodeError("bad_imei", pos, f"IMEI nibbles {s} are not 0 + 15 decimal digits")
    return s[1:]


def encode_imei_nibbles(imei: object) -> bytes:
    if not isinstance(imei, str) or len(imei) != 15 or not imei.isascii() or not imei.isdigit():
        raise EncodeError(f"IMEI must be 15 ASCII digits, got {imei!r}")
    return bytes.fromhex("0" + imei)


def decode_messages(buf: bytes, pos: int, end: int, codec: int, count: int,
                    lenient: bool = False) -> tuple[GprsMessage, ...]:
    """`count` messages filling buf[pos:end] exactly (end = position of quantity 2)."""
    if count * 5 > end - pos:
        raise DecodeError("truncated", end, f"{count} messages need at least {count * 5} "
                          f"bytes, the data field holds {end - pos}")
    types = TYPES[codec]
    prefix = _PREFIX[codec]
    out = []
    for _ in range(count):
        if pos + 5 > end:
            raise DecodeError("truncated", pos, f"need 5 bytes at offset {pos}, have {end - pos}")
        typ, size = _MSG_HEAD.unpack_from(buf, pos)
        if typ not in types and not (lenient and codec in (CODEC_12, CODEC_13)):
            raise DecodeError("bad_message_type", pos,
                              f"type 0x{typ:02X} is not valid for Codec {codec}")
        body = pos + 5
        if size > end - body:
            raise DecodeError("truncated", body, f"message declares {size} bytes, "
                              f"the data field holds {end - body}")
        if size < prefix:
            raise DecodeError("bad_length", pos + 1, f"Codec {codec} message of {size} bytes "
                              f"is shorter than its {prefix}-byte timestamp/IMEI prefix")
        stop = body + size
        imei = timestamp = None
        width = 4
        if codec == CODEC_12:
            payload = buf[body:stop]
        elif codec == CODEC_13:
            timestamp = _U32.unpack_from(buf, body)[0]
            if lenient and timestamp <= 0xFFFF and size >= 8:
                ms = _U64.unpack_from(buf, body)[0]
                if _MS_LO <= ms < _MS_HI:
                    timestamp, width = ms, 8
            payload = buf[body + width:stop]
        elif codec == CODEC_14:
            imei = decode_imei_nibbles(buf[body:body + 8], body)
            payload = buf[body + 8:stop]
            if typ == MSG_NACK and payload:
                raise DecodeError("bad_length", pos + 1, f"Codec 14 nACK carries only the "
                                  f"IMEI, but has {len(payload)} more bytes")
        else:
            timestamp = _U32.unpack_from(buf, body)[0]
            imei = decode_imei_nibbles(buf[body + 4:body + 12], body + 4)
            payload = buf[body + 12:stop]
        out.append(GprsMessage(typ, payload, imei, timestamp, width))
        pos = stop
    if pos != end:
        raise DecodeError("bad_length", pos, f"{count} messages end at offset {pos}, but the "
                          f"data field has {end - pos} more bytes before quantity 2")
    return tuple(out)


def encode_message(codec: int, m: GprsMessage) -> bytes:
    typ = check_int("message type", m.type, 0, 0xFF)
    if typ not in TYPES[codec]:
        raise EncodeError(f"message type 0x{typ:02X} is not valid for Codec {codec}")
    payload = m.payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise EncodeError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    has_ts = codec in (CODEC_13, CODEC_15)
    has_imei = codec in (CODEC_14, CODEC_15)
    if (m.timestamp is not None) != has_ts:
        raise EncodeError(f"Codec {codec} messages {'need' if has_ts else 'have no'} a timestamp")
    if (m.imei is not None) != has_imei:
        raise EncodeError(f"Codec {codec} messages {'need' if has_imei else 'have no'} an IMEI")
    prefix = b""
    if has_ts:
        width = m.timestamp_width
        if width not in (4, 8) or (width == 8 and codec != CODEC_13):
            raise EncodeError(f"timestamp_width {width!r}: 4, or 8 for lenient Codec 13")
        ts = check_int("timestamp", m.timestamp, 0, (1 << (8 * width)) - 1)
        prefix = (_U32 if width == 4 else _U64).pack(ts)
    elif m.timestamp_width != 4:
        raise EncodeError("timestamp_width applies to Codec 13 only")
    if has_imei:
        prefix += encode_imei_nibbles(m.imei)
    if typ == MSG_NACK and payload:
        raise EncodeError("a Codec 14 nACK carries only the IMEI")
    body = prefix + payload
    if len(body) > 0xFFFFFFFF:
        raise EncodeError("message body too large")
    return _MSG_HEAD.pack(typ, len(body)) + body


def encode_messages(codec: int, messages) -> bytes:
    """The data field: Codec ID, quantity 1, messages, quantity 2."""
    if codec not in TYPES:
        raise EncodeError(f"codec {codec} is not a GPRS codec (12..15)")
    n = len(messages)
    if n > 255:
        raise EncodeError(f"{n} messages > 255 per packet")
    return bytes((codec, n)) + b"".join(encode_message(codec, m) for m in messages) + bytes((n,))

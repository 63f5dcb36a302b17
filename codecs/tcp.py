"""TCP frames: IMEI login, its 1-byte answer, data frames (AVL and GPRS), ACK, keep-alive.

Device -> server (protocol notes 2), big-endian:

  IMEI login   00 0F | 15 ASCII digits                       (first 2 bytes > 0)
  keep-alive   FF                                            (one byte, never answered)
  data frame   off size
                 0   4  preamble 00 00 00 00
                 4   4  data field length L (Codec ID .. Number of Data 2 / Quantity 2)
                 8   L  data field: codec id, then AVL records (avl.py) or GPRS
                        messages (gprs.py), closed by the count byte again
               8+L   4  CRC-16/IBM of the data field, upper 2 bytes 00 00

Server -> device: login answer 01 (accept) / 00 (reject); AVL ACK = u32 records accepted.
"""
from __future__ import annotations

import struct

from . import _avlbatch, avl, gprs
from .crc import crc16
from .errors import DecodeError, EncodeError, check_int
from .packets import (AVL_CODECS, GPRS_CODECS, AvlPacket, AvlRecord, GprsPacket, ImeiLogin,
                      KeepAlive, TcpAck)

_FRAME_HEAD = struct.Struct(
    ">I"  # preamble, 0
    "I"   # data field length L
)
_U32 = struct.Struct(">I")
KEEPALIVE = KeepAlive()
KEEPALIVE_BYTE = b"\xff"
_AVL_CODECS = AVL_CODECS
_GPRS_CODECS = GPRS_CODECS
_AVL_STRICT = avl.STRICT
_NO_CAP = 1 << 40  # the framer caps sizes; decode() of a whole frame does not
_parse_avl_frame = _avlbatch.parse_frame  # the C twin of the strict path below (docs/decode_batch.md)


def check_imei(raw: bytes, pos: int) -> str:
    """15 ASCII digits -> str, else DecodeError("bad_imei") at the first bad byte."""
    if len(raw) == 15 and raw.isdigit():  # bytes.isdigit is ASCII-only
        return raw.decode("ascii")
    for i, b in enumerate(raw):
        if not 0x30 <= b <= 0x39:
            raise DecodeError("bad_imei", pos + i, f"IMEI byte 0x{b:02X} is not an ASCII digit")
    raise DecodeError("bad_imei", pos, f"IMEI has {len(raw)} digits, not 15")


def decode_login(frame: bytes) -> ImeiLogin:
    n = len(frame)
    if n < 2:
        raise DecodeError("truncated", n, "need the 2-byte IMEI length")
    length = frame[0] << 8 | frame[1]
    if n < length + 2:
        raise DecodeError("truncated", n, f"login declares {length} IMEI bytes, got {n - 2}")
    if n > length + 2:
        raise DecodeError("trailing_bytes", length + 2, f"{n - length - 2} bytes after the login")
    if length != 15:
        raise DecodeError("bad_imei", 0, f"IMEI length {length}, not 15")
    return ImeiLogin(check_imei(frame[2:], 2))


def decode(frame: bytes, lenient: bool = False, check_crc: bool = True):
    """One TCP frame -> ImeiLogin | KeepAlive | AvlPacket | GprsPacket.

    Strict AVL frames (the bulk of the traffic) are parsed by the C extension, which
    makes the same checks in the same order with the same reasons and offsets (the
    tests hold the two against each other on every vector, property and fuzz case);
    everything else, and lenient mode, is parsed here.
    """
    if not lenient and len(frame) > 9 and frame[8] in _AVL_CODECS and not frame[0] | frame[1]:
        codec, records = _parse_avl_frame(frame, AvlRecord, _NO_CAP, check_crc, avl.IoWidths)
        return AvlPacket(codec, records)
    return _decode(frame, lenient, check_crc)


def _decode(frame: bytes, lenient: bool, check_crc: bool):
    n = len(frame)
    if n == 0:
        raise DecodeError("empty", 0, "no bytes")
    b0 = frame[0]
    if b0 == 0xFF:
        if n == 1:
            return KEEPALIVE
        raise DecodeError("trailing_bytes", 1, f"{n - 1} bytes after the 0xFF keep-alive")
    if n < 2:
        raise DecodeError("truncated", n, "need at least 2 bytes")
    if b0 or frame[1]:
        return decode_login(frame)
    if n < 8:
        raise DecodeError("truncated", n, f"need the 8-byte frame header, got {n}")
    pre, length = _FRAME_HEAD.unpack_from(frame)
    if pre:
        raise DecodeError("bad_preamble", 0, f"preamble 0x{pre:08X}, not 0")
    if n != length + 12:
        if n < length + 12:
            raise DecodeError("truncated", n, f"frame declares {length + 12} bytes, got {n}")
        raise DecodeError("trailing_bytes", length + 12,
                          f"frame declares {length + 12} bytes, got {n}")
    if length < 3:
        raise DecodeError("bad_length", 4, f"data field length {length} < 3")
    end = 8 + length
    if check_crc:
        field = _U32.unpack_from(frame, end)[0]
        crc = crc16(frame[8:end])
        if field != crc:
            raise DecodeError("crc_mismatch", end, f"CRC field 0x{field:08X}, computed 0x{crc:04X}")
    codec = frame[8]
    is_avl = codec in _AVL_CODECS
    if not is_avl and codec not in _GPRS_CODECS:
        raise DecodeError("unknown_codec", 8, f"codec id 0x{codec:02X}")
    count = frame[9]
    if frame[end - 1] != count:
        raise DecodeError("count_mismatch", end - 1,
                          f"Number of Data 1 is {count}, Number of Data 2 is {frame[end - 1]}")
    if is_avl:
        if lenient:
            return AvlPacket(codec, avl.decode_records(frame, 10, end - 1, codec, count, True))
        return AvlPacket(codec, _AVL_STRICT[codec](frame, 10, end - 1, count, False))
    return GprsPacket(codec, gprs.decode_messages(frame, 10, end - 1, codec, count, lenient))


def frame_data(data: bytes) -> bytes:
    """Preamble + length + data field + CRC."""
    return b"%b%b%b" % (_FRAME_HEAD.pack(0, len(data)), data, _U32.pack(crc16(data)))


def encode_avl(packet: AvlPacket) -> bytes:
    return frame_data(avl.encode_records(packet.codec, packet.records))


def encode_avl_rows(codec: int, rows, lays) -> bytes:
    """The frame of AvlPacket(codec, records_from_rows) (avl.encode_rows: rows are tuples)."""
    return frame_data(avl.encode_rows(codec, rows, lays))


def encode_gprs(packet: GprsPacket) -> bytes:
    return frame_data(gprs.encode_messages(packet.codec, packet.messages))


def encode_login(login: ImeiLogin) -> bytes:
    imei = login.imei
    if not isinstance(imei, str) or len(imei) != 15 or not imei.isascii() or not imei.isdigit():
        raise EncodeError(f"IMEI must be 15 ASCII digits, got {imei!r}")
    return b"\x00\x0f" + imei.encode("ascii")


def login_reply(accepted: bool) -> bytes:
    """The server's one-byte answer to a login: 01 accepts, 00 rejects."""
    return b"\x01" if accepted else b"\x00"


def decode_login_reply(data: bytes) -> bool:
    if len(data) != 1 or data[0] > 1:
        raise DecodeError("bad_value" if len(data) == 1 else "truncated" if not data
                          else "trailing_bytes", min(len(data), 1),
                          f"login answer must be the single byte 00 or 01, got {data.hex()}")
    return data[0] == 1


def encode_tcp_ack(count: int) -> bytes:
    """The 4-byte ACK: number of records accepted, big-endian."""
    return _U32.pack(check_int("ACK count", count, 0, 0xFFFFFFFF))


def decode_tcp_ack(data: bytes) -> TcpAck:
    if len(data) != 4:
        raise DecodeError("truncated" if len(data) < 4 else "trailing_bytes", min(len(data), 4),
                          f"TCP ACK is 4 bytes, got {len(data)}")
    return TcpAck(_U32.unpack(data)[0])

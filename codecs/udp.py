"""UDP datagrams: one AVL packet each, and the server's ACK. No login, no CRC.

Device -> server (protocol notes 3), big-endian:

  off  size  field
    0     2  length: bytes after this field (datagram size - 2)
    2     2  packet id (chosen by the device; echoed in the ACK)
    4     1  packet type / "not usable byte" (devices send 01)
    5     1  AVL packet id (echoed in the ACK)
    6     2  IMEI length, 15
    8    15  IMEI, ASCII digits
   23     1  codec id (8, 0x8E, 16)
   24     1  Number of Data 1
   25     X  AVL records (avl.py)
  end-1   1  Number of Data 2

Server -> device ACK: 00 05 | packet id u16 | 01 | AVL packet id u8 | accepted u8.
"""
from __future__ import annotations

import struct

from . import avl
from .errors import DecodeError, EncodeError, check_int
from .packets import AVL_CODECS, AvlPacket, UdpAck
from .tcp import check_imei

_HEAD = struct.Struct(
    ">H"  # length (after this field)
    "H"   # packet id
    "B"   # packet type
    "B"   # AVL packet id
    "H"   # IMEI length
)
_ACK = struct.Struct(
    ">H"  # length, 5
    "H"   # packet id (echo)
    "B"   # 01
    "B"   # AVL packet id (echo)
    "B"   # records accepted
)
_MIN = 26  # header 8 + IMEI 15 + codec + two counts
AVL_OFFSET = 23  # where the AVL part (codec .. Number of Data 2) starts


def header(dgram: bytes) -> tuple[int, int, int, str]:
    """Check a datagram's header and return (packet id, packet type, AVL packet id, IMEI);
    its AVL part (codec .. Number of Data 2) is dgram[23:]. Raises DecodeError."""
    n = len(dgram)
    if n == 0:
        raise DecodeError("empty", 0, "no bytes")
    if n < 2:
        raise DecodeError("truncated", n, "need the 2-byte length")
    length = dgram[0] << 8 | dgram[1]
    if n < length + 2:
        raise DecodeError("truncated", n, f"UDP length says {length + 2} bytes, got {n}")
    if n > length + 2:
        raise DecodeError("trailing_bytes", length + 2, f"UDP length says {length + 2} bytes, got {n}")
    if n < _MIN:
        raise DecodeError("truncated", n, f"a UDP AVL datagram has at least {_MIN} bytes, got {n}")
    _, packet_id, packet_type, avl_packet_id, imei_len = _HEAD.unpack_from(dgram)
    if imei_len != 15:
        raise DecodeError("bad_imei", 6, f"IMEI length {imei_len}, not 15")
    return packet_id, packet_type, avl_packet_id, check_imei(dgram[8:23], 8)


def header_is(dgram: bytes, imei: bytes) -> bool:
    """True when header() accepts the datagram and its IMEI is `imei` (15 ASCII digits,
    checked by the caller), in four comparisons and without building anything: the
    stream pipeline's test before it hands the datagram to decode_batch(udp=...). False
    otherwise; header() then says why."""
    n = len(dgram)
    return n >= _MIN and (dgram[0] << 8 | dgram[1]) == n - 2 and dgram[6:8] == b"\x00\x0f" and dgram[8:23] == imei


def decode(dgram: bytes, lenient: bool = False) -> AvlPacket:
    packet_id, packet_type, avl_packet_id, imei = header(dgram)
    n = len(dgram)
    codec = dgram[23]
    if codec not in AVL_CODECS:
        raise DecodeError("unknown_codec", 23, f"codec id 0x{codec:02X} is not an AVL codec")
    count = dgram[24]
    if dgram[n - 1] != count:
        raise DecodeError("count_mismatch", n - 1,
                          f"Number of Data 1 is {count}, Number of Data 2 is {dgram[n - 1]}")
    records = avl.decode_records(dgram, 25, n - 1, codec, count, lenient)
    return AvlPacket(codec, records, "udp", imei, packet_id, avl_packet_id, packet_type)


def encode(packet: AvlPacket) -> bytes:
    imei = packet.imei
    if not isinstance(imei, str) or len(imei) != 15 or not imei.isascii() or not imei.isdigit():
        raise EncodeError(f"a UDP packet needs its IMEI as 15 ASCII digits, got {imei!r}")
    pid = check_int("packet_id", 0 if packet.packet_id is None else packet.packet_id, 0, 0xFFFF)
    ptype = check_int("packet_type", 1 if packet.packet_type is None else packet.packet_type, 0, 0xFF)
    apid = check_int("avl_packet_id",
                     0 if packet.avl_packet_id is None else packet.avl_packet_id, 0, 0xFF)
    return datagram(avl.encode_records(packet.codec, packet.records), imei, pid, ptype, apid)


def datagram(body: bytes, imei: str, pid: int, ptype: int, apid: int) -> bytes:
    """The header + the AVL part (codec .. Number of Data 2); imei and ids checked."""
    length = 21 + len(body)  # after the length field: 6 header bytes + IMEI + body
    if length > 0xFFFF:
        raise EncodeError(f"datagram of {length + 2} bytes does not fit the u16 length")
    return _HEAD.pack(length, pid, ptype, apid, 15) + imei.encode("ascii") + body


def encode_rows(codec: int, rows, lays, imei: str, packet_id: int = 0, avl_packet_id: int = 0,
                packet_type: int = 1) -> bytes:
    """The datagram of AvlPacket(codec, records_from_rows, "udp", imei, ...) (avl.encode_rows)."""
    return datagram_checked(avl.encode_rows(codec, rows, lays), imei, packet_id, packet_type,
                            avl_packet_id)


def datagram_checked(body: bytes, imei: str, packet_id: int, packet_type: int, avl_packet_id: int) -> bytes:
    """datagram() with the IMEI and the ids checked as encode() checks them."""
    if not isinstance(imei, str) or len(imei) != 15 or not imei.isascii() or not imei.isdigit():
        raise EncodeError(f"a UDP packet needs its IMEI as 15 ASCII digits, got {imei!r}")
    pid = check_int("packet_id", packet_id, 0, 0xFFFF)
    ptype = check_int("packet_type", packet_type, 0, 0xFF)
    apid = check_int("avl_packet_id", avl_packet_id, 0, 0xFF)
    return datagram(body, imei, pid, ptype, apid)


def udp_ack_for(packet: AvlPacket, accepted: int | None = None) -> UdpAck:
    """The ACK for `packet`: echoes its ids; accepts every record unless told otherwise."""
    count = len(packet.records) if accepted is None else accepted
    return UdpAck(packet.packet_id or 0, packet.avl_packet_id or 0, count)


def encode_ack(ack: UdpAck) -> bytes:
    return _ACK.pack(5, check_int("UDP ACK packet_id", ack.packet_id, 0, 0xFFFF), 1,
                     check_int("UDP ACK avl_packet_id", ack.avl_packet_id, 0, 0xFF),
                     check_int("UDP ACK count", ack.count, 0, 0xFF))


def encode_udp_ack(packet_id: int, avl_packet_id: int, count: int) -> bytes:
    return encode_ack(UdpAck(packet_id, avl_packet_id, count))


def decode_ack(data: bytes) -> UdpAck:
    n = len(data)
    if n != 7:
        raise DecodeError("truncated" if n < 7 else "trailing_bytes", min(n, 7),
                          f"UDP ACK is 7 bytes, got {n}")
    length, pid, one, apid, count = _ACK.unpack(data)
    if length != 5:
        raise DecodeError("bad_length", 0, f"UDP ACK length {length}, not 5")
    if one != 1:
        raise DecodeError("bad_value", 4, f"UDP ACK byte 4 is 0x{one:02X}, not 01")
    return UdpAck(pid, apid, count)

"""Each strict check fails with its reason code and the offset of the offending byte."""
from __future__ import annotations

import struct

import pytest

from fleetcloak.codecs import (REASONS, AvlPacket, AvlRecord, DecodeError, GprsMessage,
                               GprsPacket, decode, encode)
from fleetcloak.codecs.crc import crc16

REC = AvlRecord(1_560_161_086_000, 1, 25.2618832, 54.6990336, 148, 10, 18, 40, 239,
                {239: 1, 66: 24079, 241: 24602, 78: 0}, {239: 1, 66: 2, 241: 4, 78: 8})
C8 = encode(AvlPacket(8, (REC,)))
C16 = encode(AvlPacket(16, (AvlRecord(**{**{f: getattr(REC, f) for f in REC.__slots__},
                                          "generation_type": 5}),)))
UDP = encode(AvlPacket(8, (REC,), "udp", "352093086403655", 0xCAFE, 5, 1))
C14 = encode(GprsPacket(14, (GprsMessage(5, b"getver", imei="352093081452251"),)))


def tcp_frame(data: bytes) -> bytes:
    return struct.pack(">II", 0, len(data)) + data + struct.pack(">I", crc16(data))


def patched(frame: bytes, at: int, value: int) -> bytes:
    """Change one byte of a TCP frame's data field and fix the CRC."""
    data = bytearray(frame[8:-4])
    data[at - 8] = value
    return tcp_frame(bytes(data))


def fails(frame, reason, offset=None, transport="tcp", **kw):
    with pytest.raises(DecodeError) as ei:
        decode(frame, transport, **kw)
    e = ei.value
    assert e.reason == reason, str(e)
    assert e.reason in REASONS
    if offset is not None:
        assert e.offset == offset, str(e)
    assert isinstance(e, ValueError)
    return e


def test_empty():
    fails(b"", "empty", 0)
    fails(b"", "empty", 0, "udp")


def test_crc_mismatch():
    bad = C8[:-1] + bytes([C8[-1] ^ 0xFF])
    fails(bad, "crc_mismatch", len(C8) - 4)
    fails(C8[:-4] + b"\x00\x01" + C8[-2:], "crc_mismatch")  # upper CRC bytes must be 0


def test_number_of_data_mismatch():
    fails(patched(C8, len(C8) - 5, 2), "count_mismatch", len(C8) - 5)


def test_truncated_and_trailing():
    fails(C8[:-1], "truncated")
    fails(C8 + b"\x00", "trailing_bytes", len(C8))
    fails(b"\x00\x00\x00", "truncated")
    fails(UDP[:-1], "truncated", transport="udp")
    fails(UDP + b"\x01", "trailing_bytes", len(UDP), "udp")


def test_declared_length_vs_records():
    # one more byte inside the data field than the records use
    data = C8[8:-5] + b"\x00" + C8[-5:-4]
    fails(tcp_frame(data), "bad_length", len(C8) - 5)
    fails(tcp_frame(b"\x08\x00"), "bad_length", 4)


def test_records_cannot_fit():
    fails(patched(patched(C8, 9, 9), len(C8) - 5, 9), "truncated")


def test_bad_preamble():
    fails(b"\x00\x00\x00\x01" + C8[4:], "bad_preamble", 0)


def test_unknown_codec():
    fails(patched(C8, 8, 0x07), "unknown_codec", 8)
    fails(UDP[:23] + b"\x0c" + UDP[24:], "unknown_codec", 23, "udp")


def test_ntotal():
    fails(patched(C8, 10 + 25, 3), "count_mismatch", 10 + 25)


def test_priority():
    fails(patched(C8, 10 + 8, 4), "bad_priority", 10 + 8)


def test_generation_type():
    fails(patched(C16, 10 + 26, 8), "bad_generation_type", 10 + 26)
    assert decode(patched(C16, 10 + 26, 7)).records[0].generation_type == 7


def test_duplicate_io():
    # 239 (N1) then 66 (N2): make the N2 id 239 as well
    at = 10 + 27 + 2 + 1  # N1 count at 36, pair 239/1 at 37-38, N2 count 39, N2 id at 40
    assert C8[at] == 66
    e = fails(patched(C8, at, 239), "duplicate_io", at)
    assert "239" in e.detail
    nx = encode(AvlPacket(0x8E, (AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {5: 1, 6: b"ab"},
                                           {5: 1}),)))
    i = nx.index(b"\x00\x06\x00\x02ab")
    fails(patched(nx, i + 1, 5), "duplicate_io", i)


def test_login_imei():
    fails(b"\x00\x0f" + b"35630704244101x", "bad_imei", 16)
    fails(b"\x00\x0e" + b"35630704244101", "bad_imei", 0)
    fails(b"\x00\x0f" + b"3563070424410", "truncated")
    fails(b"\x00\x0f" + b"3563070424410133", "trailing_bytes", 17)
    fails(b"\x00\x0f" + "35630704244101\u0663".encode()[:15], "bad_imei")


def test_udp_imei():
    fails(UDP[:10] + b"A" + UDP[11:], "bad_imei", 10, "udp")
    fails(UDP[:7] + b"\x0e" + UDP[8:], "bad_imei", 6, "udp")


def test_keepalive_alone():
    assert decode(b"\xff") == decode(b"\xff")
    fails(b"\xff\x00\x0f", "trailing_bytes", 1)


def test_gprs_errors():
    fails(patched(C14, 10, 0x0B), "bad_message_type", 10)          # 0x0B is Codec 15 only
    imei_at = 15
    fails(patched(C14, imei_at, 0x13), "bad_imei", imei_at)          # first nibble must be 0
    fails(patched(C14, imei_at + 1, 0x5A), "bad_imei", imei_at)      # A is not a digit
    fails(patched(C14, 14, 30), "truncated")                         # size beyond the field
    fails(patched(C14, 14, 5), "bad_length")                         # shorter than the IMEI
    fails(patched(C14, len(C14) - 5, 2), "count_mismatch", len(C14) - 5)
    nack = encode(GprsPacket(14, (GprsMessage(0x11, b"", imei="352093081452251"),)))
    assert decode(nack).messages[0].type == 0x11
    fails(patched(C14, 10, 0x11), "bad_length")                     # nACK carries only the IMEI


def test_udp_header_is_true_exactly_when_header_accepts_that_imei():
    """udp.header_is (the stream pipeline's four comparisons) against udp.header(), on
    the datagram with each header byte changed, and cut short or lengthened."""
    from fleetcloak.codecs import udp

    imei = UDP[8:23]
    variants = [UDP, UDP[:-1], UDP + b"\x00", UDP[:25], b"", b"\x00"]
    variants += [UDP[:k] + bytes([v]) + UDP[k + 1:] for k in range(23) for v in (0x00, 0x0F, 0x30, 0x41, 0xFF)]
    for d in variants:
        try:
            accepted = udp.header(d)[3].encode() == imei
        except DecodeError:
            accepted = False
        assert udp.header_is(d, imei) is accepted, d.hex()


def test_udp_gprs_is_not_supported():
    fails(UDP[:23] + b"\x0e" + UDP[24:], "unknown_codec", 23, "udp")


def test_bytes_like_inputs():
    assert decode(bytearray(C8)) == decode(memoryview(C8)) == decode(C8)


@pytest.mark.parametrize("codec", [8, 0x8E, 16])
def test_every_cut_inside_the_records_is_truncated_or_bad_length(codec):
    gen = 3 if codec == 16 else None
    recs = (AvlRecord(1, 0, -1.0, 1.0, -4, 1, 2, 3, 4, {1: 1, 2: 300, 3: 70000, 4: 1 << 40},
                      {1: 1, 2: 2, 3: 4, 4: 8}, gen),
            AvlRecord(2, 1, 2.0, -2.0, 5, 6, 7, 8, 9, {9: 9, **({300: b"nx!"} if codec == 0x8E else {})},
                      {9: 1}, gen))
    body = encode(AvlPacket(codec, recs))[10:-5]
    for cut in range(len(body)):
        frame = tcp_frame(bytes((codec, 2)) + body[:cut] + b"\x02")
        e = fails(frame, "truncated" if cut < len(body) else None)
        assert 10 <= e.offset <= len(frame) - 5, (cut, str(e))
    for extra in (1, 5):
        e = fails(tcp_frame(bytes((codec, 2)) + body + bytes(extra) + b"\x02"), "bad_length")
        assert e.offset == 10 + len(body)

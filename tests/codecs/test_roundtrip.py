"""Round-trip properties: decode(encode(p)) == p for every codec and transport, and
encode(decode(frame)) == frame; the lenient mode and its variants; encode's range checks."""
from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.codecs import (AvlPacket, AvlRecord, DecodeError, EncodeError, GprsMessage,
                               GprsPacket, ImeiLogin, KeepAlive, TcpAck, UdpAck, decode,
                               decode_login_reply, decode_tcp_ack, decode_udp_ack, encode)
from fleetcloak.codecs.avl import IoWidths
from fleetcloak.codecs.crc import crc16, crc16_py

S = sys.modules["fleetcloak_codec_strategies"]
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(S.avl_packets())
def test_avl_roundtrip(p):
    frame = encode(p)
    q = decode(frame, p.transport)
    assert q == p
    assert encode(q) == frame


@pytest.mark.parametrize("codec", [8, 0x8E, 16])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
@PROPS
@given(data=st.data())
def test_avl_roundtrip_each_codec_and_transport(codec, transport, data):
    p = data.draw(S.avl_packets(transport, codec))
    assert decode(encode(p), transport) == p
    assert decode(encode(p), transport, lenient=True) == p  # lenient accepts all strict frames


@PROPS
@given(S.gprs_packets())
def test_gprs_roundtrip(p):
    frame = encode(p)
    assert decode(frame) == p
    assert encode(decode(frame)) == frame


@pytest.mark.parametrize("codec", [12, 13, 14, 15])
@PROPS
@given(data=st.data())
def test_gprs_roundtrip_each_codec(codec, data):
    p = data.draw(S.gprs_packets(codec))
    assert decode(encode(p)) == p


@PROPS
@given(st.one_of(S.logins, S.keepalives))
def test_login_and_keepalive_roundtrip(p):
    assert decode(encode(p)) == p


@given(st.binary(max_size=300))
def test_crc_matches_reference_loop(data):
    assert crc16(data) == crc16_py(data)


def test_crc_check_values():
    assert crc16(b"123456789") == 0xBB3D


# ------------------------------------------------------------------- hand-built

def rec(**kw):
    base = dict(timestamp_ms=1_700_000_000_000, priority=1, lon=-10.0, lat=-33.8688197,
                altitude=-4, angle=359, satellites=9, speed=87, event_io_id=239)
    base.update(kw)
    return AvlRecord(**base)


def test_hand_built_record_uses_dictionary_sizes_or_smallest_width():
    # 66 External Voltage is 2 bytes in the FMB dictionary even when its value fits one;
    # 222 is not in it: the smallest width that fits.
    p = AvlPacket(8, (rec(io={66: 5, 239: 1, 78: 0, 222: 70000}),))
    q = decode(encode(p))
    assert q.records[0].io == {66: 5, 239: 1, 78: 0, 222: 70000}
    assert q.records[0].io_width == {239: 1, 66: 2, 222: 4, 78: 8}
    with pytest.raises(EncodeError, match="200"):  # 200 Sleep Mode is 1 byte
        encode(AvlPacket(8, (rec(io={200: 300}),)))
    p8e = AvlPacket(0x8E, (rec(io={9999: 300, 256: b"WVWZZZ1JZXW000001"}),))
    q8e = decode(encode(p8e))
    assert q8e.records[0].io_width == {9999: 2} and q8e.records[0].io[256] == b"WVWZZZ1JZXW000001"


def test_negative_coordinates_and_altitude():
    p = AvlPacket(0x8E, (rec(lon=-179.9999999, lat=-89.9999999, altitude=-32768),))
    r = decode(encode(p)).records[0]
    assert (r.lon, r.lat, r.altitude) == (-179.9999999, -89.9999999, -32768)


def test_decoded_io_width_is_shared_and_read_only():
    p = AvlPacket(8, (rec(io={1: 1}, io_width={1: 1}), rec(io={1: 0}, io_width={1: 1})))
    a, b = decode(encode(p)).records
    assert a.io_width is b.io_width and isinstance(a.io_width, IoWidths)
    with pytest.raises(TypeError):
        a.io_width[1] = 2
    import pickle
    assert pickle.loads(pickle.dumps(a)) == a


def test_zero_record_packet_and_empty_nx():
    assert decode(encode(AvlPacket(8, ()))) == AvlPacket(8, ())
    p = AvlPacket(0x8E, (rec(io={385: b"", 10828: b"", 11317: b"", 548: b""}),))
    assert decode(encode(p)) == p


@pytest.mark.parametrize("bad, match", [
    (AvlPacket(8, (rec(priority=4),)), "priority"),
    (AvlPacket(8, (rec(event_io_id=256),)), "event_io_id"),
    (AvlPacket(8, (rec(io={256: 1}),)), "IO id"),
    (AvlPacket(8, (rec(altitude=40000),)), "altitude"),
    (AvlPacket(8, (rec(lon=float("nan")),)), "lon"),
    (AvlPacket(8, (rec(lat=300.0),)), "lat"),
    (AvlPacket(8, (rec(io={1: -1}),)), "value"),
    (AvlPacket(8, (rec(io={1: 1 << 64}),)), "value"),
    (AvlPacket(8, (rec(io={1: 256}, io_width={1: 1}),)), "does not fit"),
    (AvlPacket(8, (rec(io={1: 1}, io_width={1: 3}),)), "width"),
    (AvlPacket(8, (rec(io={1: b"abc"}),)), "NX"),
    (AvlPacket(16, (rec(),)), "generation_type"),
    (AvlPacket(16, (rec(generation_type=8),)), "generation_type"),
    (AvlPacket(8, (rec(generation_type=1),)), "generation_type"),
    (AvlPacket(8, (rec(),) * 256), "255"),
    (AvlPacket(7, ()), "codec"),
    (AvlPacket(8, (), "udp"), "IMEI"),
    (AvlPacket(8, (), "udp", "12345678901234x"), "IMEI"),
    (AvlPacket(8, (), "udp", "123456789012345", 70000), "packet_id"),
    (AvlPacket(8, (), "bluetooth"), "transport"),
    (GprsPacket(12, (GprsMessage(0x11, b""),)), "type"),
    (GprsPacket(12, (GprsMessage(5, b"x", imei="123456789012345"),)), "IMEI"),
    (GprsPacket(13, (GprsMessage(5, b"x"),)), "timestamp"),
    (GprsPacket(14, (GprsMessage(0x11, b"x", imei="123456789012345"),)), "nACK"),
    (GprsPacket(15, (GprsMessage(0x0B, b"x", imei="1234", timestamp=1),)), "IMEI"),
    (GprsPacket(15, (GprsMessage(0x0B, b"x", imei="123456789012345", timestamp=1 << 32),)), "timestamp"),
    (ImeiLogin("35630704244101"), "IMEI"),
    (TcpAck(-1), "count"),
    (UdpAck(1, 2, 256), "count"),
])
def test_encode_rejects_out_of_range(bad, match):
    with pytest.raises(EncodeError, match=match):
        encode(bad)


def test_acks_and_login_reply():
    assert encode(TcpAck(3)) == b"\x00\x00\x00\x03"
    assert decode_tcp_ack(b"\x00\x00\x00\x03") == TcpAck(3)
    assert encode(UdpAck(0xCAFE, 5, 1)) == bytes.fromhex("0005CAFE010501")
    assert decode_udp_ack(bytes.fromhex("0005CAFE010501")) == UdpAck(0xCAFE, 5, 1)
    assert decode_login_reply(b"\x01") is True and decode_login_reply(b"\x00") is False
    for bad in (b"", b"\x02", b"\x01\x01"):
        with pytest.raises(DecodeError):
            decode_login_reply(bad)
    with pytest.raises(DecodeError):
        decode_udp_ack(bytes.fromhex("0005CAFE020501"))
    assert encode(KeepAlive()) == b"\xff"


# -------------------------------------------------------------------- lenient

def tcp_frame(data: bytes) -> bytes:
    return struct.pack(">II", 0, len(data)) + data + struct.pack(">I", crc16(data))


def n16_frame():
    """The non-standard Codec 8 N16 variant (protocol notes 5.4): an N16 group (count u8,
    [id u8, 16 bytes]*) after N8, as traccar reads it with teltonika.extended=true. No
    public vector is in our file, so it is built with our own encoder."""
    r1 = rec(io={21: 3, 66: 12000, 250: bytes(range(16))}, io_width={21: 1, 66: 2, 250: 16})
    r2 = rec(io={1: 0}, io_width={1: 1})
    return encode(AvlPacket(8, (r1, r2))), (r1, r2)


def test_codec8_n16_variant_is_lenient_only():
    frame, (r1, r2) = n16_frame()
    # record 1: ... N8 count 0, N16 count 1, id 250, 16 bytes; record 2 has N16 count 0
    assert bytes(range(16)) in frame
    with pytest.raises(DecodeError) as ei:
        decode(frame)
    assert ei.value.reason in ("bad_length", "truncated", "count_mismatch")
    p = decode(frame, lenient=True)
    assert p.records == (r1, r2)
    assert encode(p) == frame


def test_ntotal_mismatch_is_lenient_only():
    good = encode(AvlPacket(8, (rec(io={1: 1, 2: 0}, io_width={1: 1, 2: 1}),)))
    data = bytearray(good[8:-4])
    data[2 + 25] = 7  # N total
    frame = tcp_frame(bytes(data))
    with pytest.raises(DecodeError) as ei:
        decode(frame)
    assert (ei.value.reason, ei.value.offset) == ("count_mismatch", 8 + 2 + 25)
    assert decode(frame, lenient=True).records[0].io == {1: 1, 2: 0}


C13_MS_EXAMPLE = "00000000000000170D01050000000F0000016C0A81C320676574696E666F0100006855"


def test_codec13_eight_byte_timestamp_variant():
    frame = bytes.fromhex(C13_MS_EXAMPLE)
    strict = decode(frame).messages[0]  # spec reading: 4-byte seconds + 11-byte payload
    assert strict.timestamp == 0x16C and len(strict.payload) == 11
    m = decode(frame, lenient=True).messages[0]
    assert (m.timestamp, m.timestamp_width, m.payload) == (0x16C0A81C320, 8, b"getinfo")
    assert encode(decode(frame, lenient=True)) == frame
    assert m.timestamp == 1563544372000  # 2019-07-19T13:52:52Z, as protocol notes 9.1 says


def test_lenient_codec12_accepts_other_message_types():
    frame = encode(GprsPacket(12, (GprsMessage(5, b"x"),)))
    data = bytearray(frame[8:-4])
    data[2] = 0x0D  # traccar's camera sub-protocol type
    odd = tcp_frame(bytes(data))
    with pytest.raises(DecodeError) as ei:
        decode(odd)
    assert ei.value.reason == "bad_message_type"
    assert decode(odd, lenient=True).messages[0].type == 0x0D


def test_lenient_still_checks_crc_unless_told():
    frame = bytearray(encode(AvlPacket(8, (rec(),))))
    frame[-1] ^= 1
    with pytest.raises(DecodeError) as ei:
        decode(bytes(frame), lenient=True)
    assert ei.value.reason == "crc_mismatch"
    assert decode(bytes(frame), lenient=True, check_crc=False).records[0] == rec(io_width={})

"""TcpFramer: the same frames whatever the chunking; hostile lengths fail before buffering."""
from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.codecs import (NEED_DATA, AvlPacket, AvlRecord, DecodeError, GprsMessage,
                               GprsPacket, ImeiLogin, TcpFramer, decode, encode)

S = sys.modules["fleetcloak_codec_strategies"]
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frames_st = st.lists(S.tcp_packets.map(encode), max_size=8)


def feed_chunks(chunks, **caps):
    framer = TcpFramer(**caps)
    out = []
    for c in chunks:
        out += framer.feed(c)
    return out, framer


def split(stream: bytes, cuts) -> list[bytes]:
    cuts = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


@PROPS
@given(frames_st, st.lists(st.integers(0, 10_000), max_size=20))
def test_any_chunking_yields_the_same_frames(frames, cuts):
    stream = b"".join(frames)
    whole, f1 = feed_chunks([stream])
    assert whole == frames and f1.buffered == 0 and f1.end_of_stream() is None
    assert feed_chunks([stream[i:i + 1] for i in range(len(stream))])[0] == frames
    assert feed_chunks(split(stream, cuts))[0] == frames
    for f in frames:  # every frame decodes on its own
        decode(f)


@PROPS
@given(frames_st, st.lists(st.integers(0, 10_000), max_size=10))
def test_next_frame_api(frames, cuts):
    framer = TcpFramer()
    got = []
    for chunk in split(b"".join(frames), cuts):
        framer.receive_data(chunk)
        while (f := framer.next_frame()) is not NEED_DATA:
            got.append(f)
    assert got == frames


def test_keepalive_right_before_login():
    login = encode(ImeiLogin("356307042441013"))
    out, _ = feed_chunks([b"\xff" + login + b"\xff\xff"])
    assert out == [b"\xff", login, b"\xff", b"\xff"]


def test_gprs_frame_may_exceed_the_avl_cap():
    big = encode(GprsPacket(12, (GprsMessage(6, b"x" * 5000),)))
    assert len(big) > 1280
    for chunks in ([big], [big[:8], big[8:]], [big[i:i + 7] for i in range(0, len(big), 7)]):
        assert feed_chunks(chunks)[0] == [big]


def hostile(chunks, reason, **caps):
    out, framer = feed_chunks(chunks, **caps)
    assert isinstance(out[-1], DecodeError) and out[-1].reason == reason
    assert framer.failed and framer.error is out[-1] and framer.buffered == 0
    assert framer.feed(b"\x00" * 100) == [] and framer.next_frame() is out[-1]
    return out


@pytest.mark.parametrize("step", [1, 3, 8, 9, 1000])
def test_hostile_lengths_fail_before_buffering(step):
    rec = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    good = encode(AvlPacket(8, (rec,)))
    huge = b"\x00\x00\x00\x00\xff\xff\xff\xf0\x08"
    stream = good + huge + b"\x00" * 5000
    chunks = [stream[i:i + step] for i in range(0, len(stream), step)]
    out = hostile(chunks, "too_large")
    assert out[0] == good and len(out) == 2 and out[1].offset == len(good) + 4
    # AVL frame over its 1280-byte cap, under the GPRS cap: rejected once the codec is known
    avl_big = b"\x00\x00\x00\x00\x00\x00\x07\xd0\x08" + b"\x00" * 2000
    out = hostile([avl_big[i:i + step] for i in range(0, len(avl_big), step)], "too_large")
    assert len(out) == 1
    hostile([b"\x00\x00\x00\x01" + b"\x00" * 50], "bad_preamble")
    hostile([b"\x41\x42" + b"x" * 100], "too_large")  # a "login" of 16708 bytes


def test_caps_are_configurable():
    gprs = encode(GprsPacket(12, (GprsMessage(6, b"x" * 300),)))
    hostile([gprs], "too_large", max_gprs_frame=200)
    rec = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    assert feed_chunks([encode(AvlPacket(8, (rec,) * 50))], max_avl_frame=4096)[0][0]
    hostile([encode(AvlPacket(8, (rec,) * 50))], "too_large")
    with pytest.raises(ValueError):
        TcpFramer(max_avl_frame=0)


def test_end_of_stream_inside_a_frame():
    login = encode(ImeiLogin("356307042441013"))
    framer = TcpFramer()
    assert framer.feed(login[:5]) == []
    e = framer.end_of_stream()
    assert e.reason == "truncated" and e.offset == 5


def test_bad_frames_do_not_desynchronise_the_stream():
    # a login with a 14-digit IMEI and a frame with a bad CRC are framed by their
    # lengths; decode() rejects them; the next frames still come out whole
    bad_login = b"\x00\x0e" + b"35630704244101"
    rec = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0)
    good = encode(AvlPacket(8, (rec,)))
    bad_crc = good[:-1] + b"\x00"
    out, framer = feed_chunks([bad_login + bad_crc + good])
    assert out == [bad_login, bad_crc, good] and not framer.failed
    with pytest.raises(DecodeError):
        decode(out[0])

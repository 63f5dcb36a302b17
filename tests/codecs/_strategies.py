"""Hypothesis strategies for valid Teltonika packets of every codec and transport.

Not a test module: test files load it with `load_strategies()` (pytest runs with
--import-mode=importlib, so sibling modules are not importable by name).
"""
from __future__ import annotations

from hypothesis import strategies as st

from fleetcloak.codecs import (AvlPacket, AvlRecord, GprsMessage, GprsPacket, ImeiLogin,
                               KeepAlive)

imeis = st.text(alphabet="0123456789", min_size=15, max_size=15)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(1 << 31), (1 << 31) - 1)
WIDTH_MAX = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: (1 << 64) - 1}


@st.composite
def io_elements(draw, codec: int, max_size: int = 14):
    """(io, io_width): distinct ids, fixed values with their widths, NX bytes on 8E."""
    id_max = 0xFF if codec == 8 else 0xFFFF
    ids = draw(st.lists(st.integers(0, id_max), unique=True, max_size=max_size))
    io: dict = {}
    widths: dict = {}
    for i in ids:
        if codec == 0x8E and draw(st.integers(0, 4)) == 0:
            io[i] = draw(st.binary(max_size=24))  # NX, zero-length included
        else:
            w = draw(st.sampled_from((1, 2, 4, 8)))
            io[i] = draw(st.integers(0, WIDTH_MAX[w]))
            widths[i] = w
    return io, widths


@st.composite
def records(draw, codec: int):
    io, widths = draw(io_elements(codec))
    return AvlRecord(
        timestamp_ms=draw(st.integers(0, (1 << 64) - 1)),
        priority=draw(st.integers(0, 3)),
        lon=draw(i32) / 1e7,
        lat=draw(i32) / 1e7,
        altitude=draw(st.integers(-32768, 32767)),
        angle=draw(u16),
        satellites=draw(u8),
        speed=draw(u16),
        event_io_id=draw(st.integers(0, 0xFF if codec == 8 else 0xFFFF)),
        io=io,
        io_width=widths,
        generation_type=draw(st.integers(0, 7)) if codec == 16 else None,
    )


@st.composite
def avl_packets(draw, transport: str | None = None, codec: int | None = None, max_records: int = 4):
    codec = codec if codec is not None else draw(st.sampled_from((8, 0x8E, 16)))
    transport = transport or draw(st.sampled_from(("tcp", "udp")))
    recs = tuple(draw(st.lists(records(codec), max_size=max_records)))
    if transport == "tcp":
        return AvlPacket(codec, recs)
    return AvlPacket(codec, recs, "udp", draw(imeis), draw(u16), draw(u8), draw(u8))


@st.composite
def gprs_messages(draw, codec: int):
    if codec == 12:
        return GprsMessage(draw(st.sampled_from((5, 6))), draw(st.binary(max_size=80)))
    if codec == 13:
        return GprsMessage(draw(st.sampled_from((5, 6))), draw(st.binary(max_size=80)),
                           timestamp=draw(u32))
    if codec == 14:
        typ = draw(st.sampled_from((5, 6, 0x11)))
        payload = b"" if typ == 0x11 else draw(st.binary(max_size=80))
        return GprsMessage(typ, payload, imei=draw(imeis))
    return GprsMessage(0x0B, draw(st.binary(max_size=80)), imei=draw(imeis), timestamp=draw(u32))


@st.composite
def gprs_packets(draw, codec: int | None = None):
    codec = codec if codec is not None else draw(st.sampled_from((12, 13, 14, 15)))
    msgs = draw(st.lists(gprs_messages(codec), min_size=0, max_size=3))
    return GprsPacket(codec, tuple(msgs))


logins = st.builds(ImeiLogin, imeis)
keepalives = st.just(KeepAlive())
# Anything a device sends on a TCP connection.
tcp_packets = st.one_of(avl_packets("tcp"), gprs_packets(), logins, keepalives)

"""Fuzz: mutated, truncated, spliced and random inputs raise nothing but DecodeError.

Oracles: any exception other than DecodeError fails; every DecodeError carries a reason
from REASONS and an offset within the input; a frame that decodes strictly re-encodes
to exactly the same bytes; the framer yields the same items however a random stream is
chunked. Mutations re-fix the CRC and the length fields half the time so the cases
reach past the first checks into the record and message parsers.

Default run: a few thousand cases. `pytest -m slow tests/codecs/test_fuzz.py -s` (or
`make fuzz`) runs >= 1,000,000 and prints the count and the time.
"""
from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import pytest

from fleetcloak.codecs import (REASONS, AvlPacket, AvlRecord, DecodeError, GprsMessage,
                               GprsPacket, ImeiLogin, TcpFramer, decode, encode)
from fleetcloak.codecs.crc import crc16

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" /
                      "teltonika_public.json").read_text())
INTERESTING = (0x00, 0x01, 0x02, 0x03, 0x07, 0x08, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11,
               0x7F, 0x80, 0x8E, 0xFE, 0xFF)


def _record(rng: random.Random, codec: int) -> AvlRecord:
    io, widths = {}, {}
    id_max = 0xFF if codec == 8 else 0xFFFF
    for _ in range(rng.randint(0, 14)):
        i = rng.randint(0, id_max)
        if i in io:
            continue
        if codec == 0x8E and rng.random() < 0.2:
            io[i] = rng.randbytes(rng.randint(0, 20))
        else:
            w = rng.choice((1, 2, 4, 8))
            io[i] = rng.getrandbits(8 * w)
            widths[i] = w
    return AvlRecord(rng.getrandbits(64), rng.randint(0, 3), rng.randint(-2**31, 2**31 - 1) / 1e7,
                     rng.randint(-2**31, 2**31 - 1) / 1e7, rng.randint(-32768, 32767),
                     rng.getrandbits(16), rng.getrandbits(8), rng.getrandbits(16),
                     rng.randint(0, id_max), io, widths,
                     rng.randint(0, 7) if codec == 16 else None)


def seeds(rng: random.Random) -> list[tuple[str, bytes]]:
    """(transport, bytes): the published vectors and generated frames of every kind."""
    out = [(v["transport"], bytes.fromhex(v["hex"])) for v in VECTORS]
    imei = "352093081452251"
    for _ in range(60):
        codec = rng.choice((8, 0x8E, 16))
        recs = tuple(_record(rng, codec) for _ in range(rng.randint(0, 5)))
        out.append(("tcp", encode(AvlPacket(codec, recs))))
        out.append(("udp", encode(AvlPacket(codec, recs, "udp", imei, rng.getrandbits(16),
                                            rng.getrandbits(8), 1))))
    for codec, typ, kw in ((12, 5, {}), (12, 6, {}), (13, 6, {"timestamp": 1_700_000_000}),
                           (14, 5, {"imei": imei}), (14, 0x11, {"imei": imei}),
                           (15, 0x0B, {"imei": imei, "timestamp": 1_699_440_036})):
        payload = b"" if typ == 0x11 else rng.randbytes(rng.randint(0, 40))
        out.append(("tcp", encode(GprsPacket(codec, (GprsMessage(typ, payload, **kw),)))))
    out.append(("tcp", encode(ImeiLogin(imei))))
    out.append(("tcp", b"\xff"))
    n16 = AvlRecord(1, 1, 0.0, 0.0, 0, 0, 0, 0, 0, {1: 1, 200: bytes(16)}, {1: 1, 200: 16})
    out.append(("tcp", encode(AvlPacket(8, (n16, n16)))))
    out.append(("tcp", bytes.fromhex(
        "00000000000000170D01050000000F0000016C0A81C320676574696E666F0100006855")))
    return out


def _fix(transport: str, b: bytearray) -> bytes:
    """Re-fix the length fields and the CRC of a mutated frame, where it has them."""
    if transport == "udp":
        if len(b) >= 2:
            b[0:2] = struct.pack(">H", (len(b) - 2) & 0xFFFF)
    elif len(b) >= 12 and not b[0] and not b[1]:
        b[4:8] = struct.pack(">I", len(b) - 12)
        b[-4:] = struct.pack(">I", crc16(bytes(b[8:-4])))
    return bytes(b)


def mutate(rng: random.Random, corpus) -> tuple[str, bytes]:
    transport, src = rng.choice(corpus)
    b = bytearray(src)
    op = rng.randrange(9)
    if op == 0 or not b:                      # random bytes
        b = bytearray(rng.randbytes(rng.randint(0, 64)))
        if rng.random() < 0.5:
            b[0:0] = b"\x00\x00\x00\x00"
    elif op == 1:                             # truncate
        del b[rng.randrange(len(b)):]
    elif op == 2:                             # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 3:                             # interesting byte values
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.choice(INTERESTING)
    elif op == 4:                             # insert bytes
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 8))
    elif op == 5:                             # delete bytes
        at = rng.randrange(len(b))
        del b[at:at + rng.randint(1, 8)]
    elif op == 6:                             # splice two inputs
        other = rng.choice(corpus)[1]
        b = b[:rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1):]
    elif op == 7:                             # duplicate a slice
        a = rng.randrange(len(b))
        z = min(len(b), a + rng.randint(1, 32))
        b[z:z] = b[a:z]
    else:                                     # a random u16/u32 field value
        at = rng.randrange(len(b))
        b[at:at + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x00\x01"))
    if rng.random() < 0.5:
        return transport, _fix(transport, b)
    return transport, bytes(b)


def check_one(transport: str, data: bytes, lenient: bool, check_crc: bool) -> bool:
    """Decode one input; True if it decoded. Raises AssertionError on any oracle failure."""
    try:
        p = decode(data, transport, lenient=lenient, check_crc=check_crc)
    except DecodeError as e:
        assert e.reason in REASONS, (e.reason, data.hex())
        assert 0 <= e.offset <= len(data), (str(e), e.offset, data.hex())
        return False
    except Exception as e:  # noqa: BLE001 - the point of the fuzz
        raise AssertionError(f"{type(e).__name__}: {e} on {transport} {data.hex()}") from e
    if not lenient and check_crc:
        assert encode(p) == data, (transport, data.hex())
    return True


def check_framer(rng: random.Random, corpus) -> None:
    parts = [mutate(rng, corpus)[1] if rng.random() < 0.3 else rng.choice(corpus)[1]
             for _ in range(rng.randint(1, 6))]
    stream = b"".join(parts)
    whole = TcpFramer().feed(stream)
    f = TcpFramer()
    got = []
    i = 0
    while i < len(stream):
        j = i + rng.randint(1, 64)
        got += f.feed(stream[i:j])
        i = j
    assert [x if isinstance(x, bytes) else (x.reason, x.offset) for x in got] == \
        [x if isinstance(x, bytes) else (x.reason, x.offset) for x in whole], stream.hex()
    for x in whole:
        if isinstance(x, bytes):
            check_one("tcp", x, False, True)


def run_fuzz(n: int, seed: int) -> tuple[int, int]:
    """n decode cases (+ one framer case per 50). Returns (cases, decoded_ok)."""
    rng = random.Random(seed)
    corpus = seeds(rng)
    ok = 0
    for k in range(n):
        transport, data = mutate(rng, corpus)
        if rng.random() < 0.1:
            transport = "udp" if transport == "tcp" else "tcp"
        ok += check_one(transport, data, rng.random() < 0.3, rng.random() < 0.9)
        if k % 50 == 0:
            check_framer(rng, corpus)
    return n, ok


def test_fuzz_default():
    cases, ok = run_fuzz(20_000, seed=20261122)
    assert cases == 20_000 and ok > 1000  # the fixed-up mutations do reach valid frames


def test_seed_corpus_decodes():
    rng = random.Random(1)
    for transport, data in seeds(rng):
        if data.hex().upper() in {v["hex"].upper() for v in VECTORS if v["kind"] == "malformed"}:
            continue
        decode(data, transport, lenient=True)


@pytest.mark.slow
def test_fuzz_million(capsys):
    t0 = time.perf_counter()
    total = ok = 0
    for seed in range(4):  # four seeds, each its own corpus
        n, k = run_fuzz(250_000, seed)
        total += n
        ok += k
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nfuzz: {total:,} decode cases (+{total // 50:,} framer streams), "
              f"{ok:,} decoded, only DecodeError otherwise, in {dt:.1f} s")
    assert total >= 1_000_000


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["tcp", "udp"]), st.booleans(), st.booleans())
def test_random_bytes_only_decode_error(data, transport, lenient, prefix):
    if prefix and transport == "tcp":  # aim random bodies at the data-frame parser
        data = b"\x00\x00\x00\x00" + struct.pack(">I", max(len(data) - 4, 0)) + data
    check_one(transport, data, lenient, True)
    check_one(transport, data, lenient, False)


def test_caches_stay_bounded_under_many_shapes_and_ids():
    from fleetcloak.codecs import avl

    rng = random.Random(7)
    for k in range(1500):
        counts = (k % 40, k // 40 % 40, 1, 0)
        ids = rng.sample(range(1, 60000), sum(counts))
        io = {}
        widths = {}
        for i, w in zip(ids, [1] * counts[0] + [2] * counts[1] + [4] * counts[2]):
            io[i], widths[i] = 0, w
        rec = AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, io, widths)
        frame = encode(AvlPacket(0x8E, (rec,)))
        assert decode(frame).records[0] == rec
    assert len(avl._SHAPES[0x8E]) <= avl._CACHE_MAX
    assert sum(len(s.iow) for c in avl._SHAPES.values() for s in c.values()) == avl._IOW_COUNT[0]
    assert avl._IOW_COUNT[0] <= avl._IOW_TOTAL

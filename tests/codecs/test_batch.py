"""decode_batch (the C columnar decoder): vectors, per-frame errors, agreement with
decode() on arbitrary valid packets, and a fuzz run that must never crash the process.

A segfault in the C extension kills pytest: that is a failure of this file.
"""
from __future__ import annotations

import json
import random
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.codecs import REASONS, AvlPacket, AvlRecord, DecodeError, _avlbatch, decode, encode
from fleetcloak.codecs.batch import AvlBatch, decode_avl_frame, decode_batch
from fleetcloak.codecs.crc import crc16, crc16_py

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "teltonika_public.json")
                     .read_text())
TCP_AVL = [v for v in VECTORS if v["transport"] == "tcp" and v["kind"] == "avl"]
UDP_AVL = [v for v in VECTORS if v["transport"] == "udp" and v["kind"] == "avl"]
AVL_CODECS = (0x08, 0x8E, 0x10)


# ---------------------------------------------------------------------------- helpers

def tcp_frame(data: bytes, crc: int | None = None) -> bytes:
    """Preamble + length + data field + CRC (the CRC of the data unless given)."""
    return struct.pack(">II", 0, len(data)) + data + struct.pack(
        ">I", crc16(data) if crc is None else crc)


def data_of(frame: bytes) -> bytes:
    return frame[8:-4]


def udp_as_tcp(v: dict) -> bytes:
    """The codec..N2 part of a UDP datagram is a TCP data field: frame it."""
    return tcp_frame(bytes.fromhex(v["hex"])[23:])


def expected_io(rec: dict) -> dict:
    return {int(k): bytes.fromhex(x) if isinstance(x, str) else x for k, x in rec["io"].items()}


def assert_record_matches(r: AvlRecord, e: dict) -> None:
    for key in ("timestamp_ms", "priority", "lon", "lat", "altitude", "angle", "satellites",
                "speed", "event_io_id"):
        assert getattr(r, key) == e[key], key
    assert r.generation_type == e.get("generation_type")
    assert r.io == expected_io(e)
    assert list(r.io) == [int(k) for k in e["io"]], "io not in wire order"
    fixed = {int(k): s for k, s in e["io_size"].items() if not isinstance(e["io"][k], str)}
    assert r.io_width == fixed


def rows_of(batch: AvlBatch, k: int) -> AvlBatch:
    return batch.select(batch.frame_index == k)


def check_batch_against_decode(frames: list[bytes], batch: AvlBatch, cap: int = 1280,
                               check_crc: bool = True) -> None:
    """Every frame: same records as decode(), or the same (reason, offset) as decode()."""
    assert batch.n_frames == len(frames)
    errors = dict(batch.errors)
    assert len(errors) == len(batch.errors)
    offs = batch.frame_offsets
    records = batch.records()
    for k, f in enumerate(frames):
        try:
            want = decode(f, check_crc=check_crc)
        except DecodeError as exc:
            want = exc
        if batch.frame_ok[k]:
            assert k not in errors
            assert isinstance(want, AvlPacket), (f.hex(), want)
            assert batch.frame_codec[k] == want.codec
            got = records[offs[k]:offs[k + 1]]
            assert got == list(want.records)
            continue
        err = errors[k]
        assert err.reason in REASONS, err.reason
        assert batch.frame_records[k] == 0
        assert isinstance(err.offset, int) and 0 <= err.offset <= max(len(f), 4)
        if err.reason == "too_large":
            assert struct.unpack_from(">I", f, 4)[0] + 12 > cap
            continue
        if f[:1] not in (b"", b"\0") or f[1:2] not in (b"", b"\0"):
            assert err.reason == "bad_preamble"     # login / keep-alive: not an AVL frame
            assert not isinstance(want, AvlPacket)
            continue
        if err.reason == "unknown_codec":          # GPRS (or junk) codec: decode may accept
            assert f[8] not in AVL_CODECS
            assert not isinstance(want, AvlPacket)
            continue
        assert isinstance(want, DecodeError), (f.hex(), err, want)
        assert (err.reason, err.offset) == (want.reason, want.offset), (f.hex(), err, want)


# ---------------------------------------------------------------------------- vectors

def test_c_crc_is_crc16_ibm():
    assert _avlbatch.crc16(b"123456789") == 0xBB3D
    rng = random.Random(7)
    for n in list(range(0, 40)) + [255, 1024, 1279]:   # every tail length of slicing-by-8
        data = rng.randbytes(n)
        assert _avlbatch.crc16(data) == crc16_py(data) == crc16(data)
    frame = bytes.fromhex(TCP_AVL[0]["hex"])
    assert _avlbatch.crc16(frame[8:-4]) == 0xC7CF



@pytest.mark.parametrize("v", TCP_AVL, ids=lambda v: v["id"])
def test_vector_alone(v):
    frame = bytes.fromhex(v["hex"])
    b = decode_batch([frame])
    assert b.errors == [] and b.frame_ok.tolist() == [True]
    assert len(b) == v["expected"]["count"] == b.frame_records[0]
    assert b.frame_codec[0] == v["codec"]
    recs = b.records()
    for r, e in zip(recs, v["expected"]["records"], strict=True):
        assert_record_matches(r, e)
    # columns carry the same values as the objects
    for i, e in enumerate(v["expected"]["records"]):
        assert b.lon_raw[i] == e["lon_raw"] and b.lat_raw[i] == e["lat_raw"]
        assert b.generation_type[i] == (e["generation_type"] if v["codec"] == 16 else -1)
        assert b.codec[i] == v["codec"]
    assert decode_avl_frame(frame) == decode(frame)


def test_all_vectors_in_one_batch_and_udp_records_reframed():
    frames = [bytes.fromhex(v["hex"]) for v in TCP_AVL] + [udp_as_tcp(v) for v in UDP_AVL]
    expected = [v["expected"]["records"] for v in TCP_AVL + UDP_AVL]
    b = decode_batch(frames)
    assert b.errors == [] and b.frame_ok.all()
    assert len(b) == sum(map(len, expected))
    assert b.frame_records.tolist() == [len(e) for e in expected]
    got = b.records()
    flat = [e for recs in expected for e in recs]
    for r, e in zip(got, flat, strict=True):
        assert_record_matches(r, e)
    assert b.frame_index.tolist() == [k for k, e in enumerate(expected) for _ in e]
    check_batch_against_decode(frames, b)


def test_published_broken_8e_body_is_truncated():
    v = next(v for v in VECTORS if v["id"] == "wiki-c8e-udp-example-broken")
    b = decode_batch([udp_as_tcp(v)])
    assert len(b) == 0 and b.errors[0][1].reason == "truncated"


# ---------------------------------------------------------------------- bad frames

GOOD = [bytes.fromhex(v["hex"]) for v in TCP_AVL]
C8 = bytes.fromhex(next(v for v in TCP_AVL if v["id"] == "wiki-c8-ex1")["hex"])
C8E = bytes.fromhex(next(v for v in TCP_AVL if v["id"] == "wiki-c8e-ex1")["hex"])
C16 = bytes.fromhex(next(v for v in TCP_AVL if v["id"] == "wiki-c16-ex1-2rec")["hex"])
GPRS = bytes.fromhex(next(v for v in VECTORS if v["id"] == "wiki-c12-getinfo-cmd")["hex"])
LOGIN = bytes.fromhex(VECTORS[0]["hex"])


def _patch(frame: bytes, pos: int, value: bytes, fix_crc: bool = True) -> bytes:
    """Overwrite bytes at `pos` (a frame offset); recompute the CRC unless told not to."""
    f = frame[:pos] + value + frame[pos + len(value):]
    return tcp_frame(data_of(f)) if fix_crc else f


BAD = [  # (frame, reason, offset)
    (b"", "empty", 0),
    (b"\xff", "bad_preamble", 0),                               # keep-alive
    (LOGIN, "bad_preamble", 0),                                 # IMEI login
    (b"\0\0\0", "truncated", 3),
    (b"\0\0\0\1" + C8[4:], "bad_preamble", 0),
    (C8[:-1], "truncated", len(C8) - 1),
    (C8 + b"\0", "trailing_bytes", len(C8)),
    (tcp_frame(b"\x08\x00"), "bad_length", 4),                  # L = 2 < 3
    (C8[:-2] + b"\x00\x00", "crc_mismatch", len(C8) - 4),
    (C8[:-4] + b"\x00\x01" + C8[-2:], "crc_mismatch", len(C8) - 4),   # upper CRC half set
    (_patch(C8, len(C8) - 5, b"\x02"), "count_mismatch", len(C8) - 5),  # N2 != N1
    (GPRS, "unknown_codec", 8),
    (_patch(C8, 8, b"\x07"), "unknown_codec", 8),
    (_patch(C8, 10 + 8, b"\x04"), "bad_priority", 18),
    (_patch(C8, 10 + 25, b"\x06"), "count_mismatch", 35),       # N total 6, groups hold 5
    (_patch(C16, 10 + 26, b"\x08"), "bad_generation_type", 36),
    (_patch(C8, 10 + 27, C8[10 + 29:10 + 30]), "duplicate_io", 39),   # 2nd N1 id := 1st
    (struct.pack(">II", 0, 0xFFFFFFF0) + C8[8:], "too_large", 4),
    (tcp_frame(b"\x08\xff" + bytes(40) + b"\xff"), "truncated", 8 + 42),  # hostile N1
]


@pytest.mark.parametrize("frame,reason,offset", BAD, ids=[f"{r}@{o}" for _, r, o in BAD])
def test_bad_frame_reported_and_the_rest_of_the_batch_decodes(frame, reason, offset):
    frames = [GOOD[0], frame, GOOD[3], GOOD[4]]
    b = decode_batch(frames)
    assert [(k, e.reason, e.offset) for k, e in b.errors] == [(1, reason, offset)]
    assert isinstance(b.errors[0][1], DecodeError) and b.errors[0][1].detail
    assert b.frame_ok.tolist() == [True, False, True, True]
    assert b.frame_records[1] == 0
    assert sorted(set(b.frame_index.tolist())) == [0, 2, 3]
    check_batch_against_decode(frames, b)
    single = decode_batch([frame]).errors
    assert [(e.reason, e.offset) for _, e in single] == [(reason, offset)]
    with pytest.raises(DecodeError) as ei:
        decode_avl_frame(frame, cap=1280)
    assert (ei.value.reason, ei.value.offset) == (reason, offset)


def test_many_bad_frames_interleaved_roll_back_cleanly():
    frames = []
    for i in range(300):
        frames.append(GOOD[i % len(GOOD)])
        frames.append(BAD[i % len(BAD)][0])
    b = decode_batch(frames)
    assert b.frame_ok.tolist() == [k % 2 == 0 for k in range(600)]
    check_batch_against_decode(frames, b)
    # io_offsets stays a consistent CSR index after every rollback
    assert b.io_offsets[0] == 0 and b.io_offsets[-1] == len(b.io_id)
    assert (np.diff(b.io_offsets) >= 0).all()


def test_duplicate_detection_resets_after_a_failed_record():
    # An 8E record that fails on a truncated NX value after marking ids must not make the
    # same ids look duplicated in the next frame.
    good = C8E
    rec_end = len(good) - 5                       # Number of Data 2 position
    bad = good[:rec_end - 2] + b"\x00\x01\x00\x07\x00\x09" + good[rec_end:]   # NX count 1, len 9
    bad = tcp_frame(data_of(bad))
    b = decode_batch([bad, good, good])
    assert [e.reason for _, e in b.errors] == ["truncated"]
    assert b.frame_ok.tolist() == [False, True, True]


def test_capacity_bounds_hold_for_the_densest_frames():
    """The column sizes are upper bounds from byte counts (records <= bytes/30, IO
    elements <= bytes/2): frames packed as densely as the wire allows must fit them
    (the C code raises RuntimeError if they did not)."""
    bare = {c: AvlRecord(1, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {}, {}, 0 if c == 0x10 else None)
            for c in AVL_CODECS}
    dense8 = AvlRecord(1, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {i: 0 for i in range(255)},
                       {i: 1 for i in range(255)}, None)
    nx8e = AvlRecord(1, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {i: b"" for i in range(2000)}, {}, None)
    frames = ([encode(AvlPacket(c, (bare[c],) * 255)) for c in AVL_CODECS]
              + [encode(AvlPacket(0x08, (dense8,) * 30)), encode(AvlPacket(0x8E, (nx8e,) * 3))])
    b = decode_batch(frames * 3, cap=1 << 20)
    assert b.errors == [] and len(b) == 3 * (3 * 255 + 30 + 3)
    assert len(b.io_id) == 3 * (30 * 255 + 3 * 2000)
    assert len(decode_batch(frames[:1], cap=1 << 20)) == 255      # 7,665 bytes, 255 records
    assert decode_avl_frame(frames[3]) == decode(frames[3])


def test_check_crc_false_and_cap():
    bad_crc = C8[:-2] + b"\x12\x34"
    assert decode_batch([bad_crc]).errors[0][1].reason == "crc_mismatch"
    b = decode_batch([bad_crc], check_crc=False)
    assert b.errors == [] and b.records() == list(decode(C8).records)
    assert decode_batch([C8], cap=len(C8) - 1).errors[0][1].reason == "too_large"
    assert decode_batch([C8], cap=len(C8)).errors == []
    big = GOOD[6]
    assert decode_batch([big], cap=64).errors[0][1].offset == 4


def test_inputs_and_empty_batch():
    b = decode_batch([])
    assert len(b) == 0 and b.n_frames == 0 and b.io_offsets.tolist() == [0]
    assert b.records() == [] and b.io_column(1).shape == (0,)
    b = decode_batch((bytearray(C8), memoryview(C8E), C16))
    assert b.errors == [] and b.frame_records.tolist() == [1, 1, 2]
    b2 = decode_batch(iter([C8, C8E, C16]))
    assert b2.records() == b.records()
    with pytest.raises(TypeError):
        decode_batch([C8, 12])


# ------------------------------------------------------------------ column accessors

def test_io_column_select_and_packets():
    frames = GOOD * 3
    b = decode_batch(frames)
    recs = b.records()
    for io_id in (1, 21, 66, 78, 239, 11317, 9999):
        col = b.io_column(io_id, default=7)
        want = [r.io.get(io_id, 7) if isinstance(r.io.get(io_id, 7), int) else 7 for r in recs]
        assert col.dtype == np.uint64 and col.tolist() == want
        assert b.io_present(io_id).tolist() == [io_id in r.io for r in recs]
        nx = b.io_bytes(io_id)
        for r, x in zip(recs, nx):
            v = r.io.get(io_id)
            assert x == (None if v is None else v if isinstance(v, bytes)
                         else v.to_bytes(r.io_width[io_id], "big"))
    assert np.isnan(b.io_column(9999, default=np.nan)).all()
    assert b.io_column(9999, default=-1).dtype == np.int64
    mask = b.satellites > 0
    sub = b.select(mask)
    assert sub.records() == [r for r, m in zip(recs, mask) if m]
    idx = [5, 0, 5, -1]
    assert b.select(idx).records() == [recs[i] for i in idx]
    assert b.select(np.array([], dtype=int)).records() == []
    assert b.record(3) == recs[3] and b.record(-1) == recs[-1]
    assert b.select(mask).io_column(66).tolist() == b.io_column(66)[mask].tolist()
    with pytest.raises(IndexError):
        b.select([len(b)])
    pk = b.packets()
    assert pk == [decode(f) for f in frames]
    assert "AvlBatch" in repr(b)


def test_threads_share_nothing():
    frames = [f for f in GOOD for _ in range(40)]
    want = decode_batch(frames).records()
    out = [None] * 4

    def work(i):
        out[i] = decode_batch(frames).records()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(o == want for o in out)


# --------------------------------------------------- property: agreement with decode

def _records(codec: int):
    id_max = 0xFF if codec == 0x08 else 0xFFFF
    ids = st.integers(0, id_max)

    @st.composite
    def io(draw):
        n = draw(st.integers(0, 14))
        keys = draw(st.lists(ids, min_size=n, max_size=n, unique=True))
        vals, widths = {}, {}
        for k in keys:
            if codec == 0x8E and draw(st.integers(0, 5)) == 0:
                vals[k] = draw(st.binary(max_size=24))
            else:
                w = draw(st.sampled_from((1, 2, 4, 8)))
                vals[k] = draw(st.integers(0, (1 << (8 * w)) - 1))
                widths[k] = w
        return vals, widths

    @st.composite
    def record(draw):
        vals, widths = draw(io())
        return AvlRecord(
            timestamp_ms=draw(st.integers(0, (1 << 64) - 1)),
            priority=draw(st.integers(0, 3)),
            lon=draw(st.integers(-(1 << 31), (1 << 31) - 1)) / 1e7,
            lat=draw(st.integers(-(1 << 31), (1 << 31) - 1)) / 1e7,
            altitude=draw(st.integers(-32768, 32767)),
            angle=draw(st.integers(0, 0xFFFF)),
            satellites=draw(st.integers(0, 0xFF)),
            speed=draw(st.integers(0, 0xFFFF)),
            event_io_id=draw(ids),
            io=vals, io_width=widths,
            generation_type=draw(st.integers(0, 7)) if codec == 0x10 else None,
        )

    return st.lists(record(), min_size=0, max_size=6)


packets = st.sampled_from(AVL_CODECS).flatmap(
    lambda c: _records(c).map(lambda rs: AvlPacket(c, tuple(rs))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets, min_size=1, max_size=5))
def test_decode_batch_agrees_with_decode_on_valid_packets(pkts):
    frames = [encode(p) for p in pkts]
    b = decode_batch(frames, cap=1 << 20)
    assert b.errors == [], b.errors
    assert len(b) == sum(len(p.records) for p in pkts)
    assert b.packets() == [decode(f) for f in frames]
    recs = b.records()
    for i, r in enumerate(recs):        # columns == attributes
        assert (b.timestamp_ms[i], b.priority[i], b.lon[i], b.lat[i], b.altitude[i], b.angle[i],
                b.satellites[i], b.speed[i], b.event_io_id[i]) == (
            r.timestamp_ms, r.priority, r.lon, r.lat, r.altitude, r.angle, r.satellites,
            r.speed, r.event_io_id)
        assert b.lon_raw[i] / 1e7 == r.lon and b.lat_raw[i] / 1e7 == r.lat
        s, e = b.io_offsets[i], b.io_offsets[i + 1]
        assert b.io_id[s:e].tolist() == list(r.io)
    for f, p in zip(frames, pkts):
        assert decode_avl_frame(f) == decode(f)
        assert [x.io for x in decode(f).records] == [x.io for x in p.records]


# ------------------------------------------------------------------------------ fuzz

def _corpus(rng: random.Random) -> list[bytes]:
    """Valid frames of every codec (vectors + generated) to mutate."""
    out = list(GOOD) + [udp_as_tcp(v) for v in UDP_AVL]
    for codec in AVL_CODECS:
        for _ in range(6):
            recs = []
            for _ in range(rng.randint(1, 4)):
                n = rng.randint(0, 8)
                keys = rng.sample(range(1, 255), n)
                vals, widths = {}, {}
                for k in keys:
                    if codec == 0x8E and rng.random() < 0.2:
                        vals[k] = rng.randbytes(rng.randint(0, 10))
                    else:
                        w = rng.choice((1, 2, 4, 8))
                        vals[k] = rng.getrandbits(8 * w)
                        widths[k] = w
                recs.append(AvlRecord(rng.getrandbits(64), rng.randint(0, 3),
                                      rng.randint(-2**31, 2**31 - 1) / 1e7,
                                      rng.randint(-2**31, 2**31 - 1) / 1e7,
                                      rng.randint(-32768, 32767), rng.randint(0, 359),
                                      rng.randint(0, 30), rng.randint(0, 300),
                                      rng.choice(keys) if keys else 0, vals, widths,
                                      rng.randint(0, 7) if codec == 0x10 else None))
            out.append(encode(AvlPacket(codec, tuple(recs))))
    return out


def _mutate(rng: random.Random, f: bytes) -> bytes:
    b = bytearray(f)
    kind = rng.randrange(9)
    if kind == 0:                                   # flip some bytes
        for _ in range(rng.randint(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:                                 # truncate
        del b[rng.randrange(len(b) + 1):]
    elif kind == 2:                                 # insert junk
        p = rng.randrange(len(b) + 1)
        b[p:p] = rng.randbytes(rng.randint(1, 8))
    elif kind == 3:                                 # delete a run
        p = rng.randrange(len(b))
        del b[p:p + rng.randint(1, 8)]
    elif kind == 4:                                 # hostile counts: 0xFF / 0xFFFF anywhere
        p = rng.randrange(10, max(11, len(b) - 4))
        b[p:p + 2] = rng.choice((b"\xff\xff", b"\xff", b"\x00\x00", b"\x7f\xff"))
    elif kind == 5:                                 # random body, plausible header
        body = bytes((rng.choice(AVL_CODECS), rng.randint(0, 5))) + rng.randbytes(rng.randint(0, 300))
        return tcp_frame(body + body[1:2])
    elif kind == 6:                                 # pure noise
        return rng.randbytes(rng.randint(0, 64))
    elif kind == 7:                                 # bad length field
        struct.pack_into(">I", b, 4, rng.choice((0, 1, 2, 3, len(b) - 13, len(b) - 11, 0xFFFFFFFF,
                                                 rng.getrandbits(32)))) if len(b) >= 8 else None
        return bytes(b)
    else:                                           # byte flips deep inside, CRC fixed below
        for _ in range(rng.randint(1, 3)):
            if len(b) > 14:
                b[rng.randrange(10, len(b) - 5)] = rng.randrange(256)
    out = bytes(b)
    # Half the time fix length and CRC so the mutation reaches the record parser.
    if len(out) >= 13 and out[:4] == b"\0\0\0\0" and rng.random() < 0.6:
        out = tcp_frame(out[8:-4])
    return out


FUZZ_CASES = 20_000     # default run, ~2 s; the slow test below runs 1,000,000


def test_fuzz_never_crashes_and_agrees_with_decode():
    rng = random.Random(20261122)
    corpus = _corpus(rng)
    frames = [_mutate(rng, rng.choice(corpus)) for _ in range(FUZZ_CASES)]
    reasons = set()
    for lo in range(0, FUZZ_CASES, 250):                  # batches of 250 frames + good ones
        chunk = frames[lo:lo + 250] + [C8, C8E, C16]
        for crc in (True, False):
            b = decode_batch(chunk, check_crc=crc)
            assert b.frame_ok[-3:].all()
            check_batch_against_decode(chunk, b, check_crc=crc)
            reasons.update(e.reason for _, e in b.errors)
        for f in chunk:                                   # the per-frame C path too
            try:
                got = decode_avl_frame(f, cap=1280)
            except DecodeError as exc:
                assert exc.reason in REASONS
            else:
                assert got == decode(f)
    # the fuzz reached deep into the parser, not just the header checks
    assert {"crc_mismatch", "truncated", "count_mismatch", "bad_length"} <= reasons, reasons
    assert len(reasons & {"duplicate_io", "bad_priority", "bad_generation_type"}) >= 2, reasons


def udp_datagram(avl: bytes, imei: bytes = b"356307042441013") -> bytes:
    """A UDP AVL datagram around an AVL part (codec .. Number of Data 2)."""
    body = struct.pack(">HBBH", 0xCAFE, 1, 7, len(imei)) + imei + avl
    return struct.pack(">H", len(body)) + body


def test_udp_datagrams_decode_in_the_batch_as_udp_decode_does():
    """decode_batch(udp=...): a UDP datagram's AVL part (no CRC) beside TCP frames: the
    records udp.decode() gives, or its reason at its offset (the datagram's)."""
    from fleetcloak.codecs import udp

    rng = random.Random(20261207)
    corpus = _corpus(rng)
    mutated = (_mutate(rng, rng.choice(corpus)) for _ in range(4000))
    dgrams = [udp_datagram(f[8:-4]) for f in mutated if f[:4] == b"\0\0\0\0" and len(f) >= 12]
    dgrams += [bytes.fromhex(v["hex"]) for v in UDP_AVL]
    frames = [f for d in dgrams for f in (d, C8)]  # TCP frames between them
    b = decode_batch(frames, udp=[k % 2 == 0 for k in range(len(frames))])
    errors, offs, records = dict(b.errors), b.frame_offsets, b.records()
    reasons = set()
    for k, f in enumerate(frames):
        try:
            want = udp.decode(f) if k % 2 == 0 else decode(f)
        except DecodeError as exc:
            want = exc
        if b.frame_ok[k]:
            assert isinstance(want, AvlPacket), (f.hex(), want)
            assert records[offs[k]:offs[k + 1]] == list(want.records)
        else:
            assert isinstance(want, DecodeError), (f.hex(), errors[k])
            assert (errors[k].reason, errors[k].offset) == (want.reason, want.offset), (f.hex(), errors[k], want)
            reasons.add(want.reason)
    assert b.frame_ok[1::2].all() and b.frame_ok[-2]  # the TCP frames and the published datagram
    assert {"truncated", "count_mismatch", "unknown_codec"} <= reasons, reasons
    with pytest.raises(ValueError, match="udp has 1 entries for 2 frames"):
        decode_batch(frames[:2], udp=[True])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_one_million():
    """1,000,000 fuzz cases (deselected by default; pytest -m slow, ~10 s): no crash,
    known reasons, and agreement with decode() on every 20th batch."""
    rng = random.Random(1_000_000)
    corpus = _corpus(rng)
    for k in range(1000):
        chunk = [_mutate(rng, rng.choice(corpus)) for _ in range(1000)] + [C8E]
        b = decode_batch(chunk)
        assert b.frame_ok[-1] and b.n_frames == 1001
        assert all(e.reason in REASONS for _, e in b.errors)
        if k % 20 == 0:
            check_batch_against_decode(chunk, b)

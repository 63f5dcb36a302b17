"""The C record ids (anonymize/_recordid.c) against hashlib, base64 and the former
pure-Python packing: ids are a stable contract, the same raw record keeps its id."""
from __future__ import annotations

import base64
import hashlib
import random

import numpy as np
import pytest

from fleetcloak import codecs
from fleetcloak.anonymize import _recordid
from fleetcloak.anonymize.batch_columns import _CONTENT_COLUMNS, columns_from_batch, record_contents
from fleetcloak.anonymize.canonical import canonical_imei
from fleetcloak.anonymize.epochs import epoch_id
from fleetcloak.anonymize.keys import b32, b32_many
from fleetcloak.anonymize.record_id import RecordContents, RecordIds
from fleetcloak.codecs.packets import AvlPacket, AvlRecord

# both hashing loops: 4 rows at a time (AVX2, when the CPU has it) and one at a time
SIMD = [pytest.param(True, id="lanes"), pytest.param(False, id="scalar")]
BOUNDARIES = [0, 1, 127, 128, 129, 255, 256, 257, 383, 384, 385, 511, 512, 513, 600]


def ref_b32(digest: bytes) -> str:
    return base64.b32encode(digest).decode().rstrip("=").lower()


def ref_id(key: bytes, data: bytes) -> str:
    return ref_b32(hashlib.blake2b(data, key=key, digest_size=16).digest())


# ------------------------------------------------------------------ BLAKE2b, base32


def test_blake2b_equals_hashlib_for_every_key_length_and_block_boundary():
    rng = random.Random(7693)
    for klen in range(1, 65):
        key = rng.randbytes(klen)
        for dlen in range(0, 601):
            data = rng.randbytes(dlen)
            assert _recordid.blake2b(data, key) == hashlib.blake2b(data, key=key, digest_size=16).digest(), (klen, dlen)


@pytest.mark.parametrize("digest_size", [1, 16, 20, 32, 63, 64])
def test_blake2b_other_digest_sizes_and_no_key(digest_size):
    rng = random.Random(digest_size)
    for dlen in BOUNDARIES:
        data = rng.randbytes(dlen)
        for key in (b"", rng.randbytes(rng.randint(1, 64))):
            want = hashlib.blake2b(data, key=key, digest_size=digest_size).digest()
            assert _recordid.blake2b(data, key, digest_size) == want


def test_blake2b_rejects_bad_parameters():
    with pytest.raises(ValueError, match="at most 64"):
        _recordid.blake2b(b"x", bytes(65))
    with pytest.raises(ValueError, match="digest_size"):
        _recordid.blake2b(b"x", b"k", 0)
    with pytest.raises(ValueError, match="digest_size"):
        _recordid.blake2b(b"x", b"k", 65)


def test_b32_many_equals_base64():
    rng = random.Random(4648)
    digests = [rng.randbytes(16) for _ in range(2000)] + [bytes(16), b"\xff" * 16]
    digests += [rng.randbytes(n) for n in (17, 20, 32, 64)]  # only the first 16 bytes count
    want = [ref_b32(d[:16]) for d in digests]
    assert _recordid.b32_many(digests) == want
    assert b32_many(digests) == want == [b32(d) for d in digests]
    assert all(len(s) == 26 and s.isascii() for s in want)
    assert b32_many([]) == []
    assert _recordid.b32_many([bytearray(16), memoryview(bytes(range(16)))]) == [ref_b32(bytes(16)), ref_b32(bytes(range(16)))]


def test_b32_many_rejects_short_digests():
    with pytest.raises(ValueError, match=r"digests\[1\] has 15 bytes"):
        _recordid.b32_many([bytes(16), bytes(15)])
    with pytest.raises(TypeError):
        _recordid.b32_many([bytes(16), "not bytes"])


# ------------------------------------------------------------------ ids()


def _ids_case(rng: random.Random, n: int, n_keys: int, prefix_lens, content_lens):
    keys = [rng.randbytes(rng.randint(1, 64)) for _ in range(n_keys)]
    prefixes = [rng.randbytes(ln) for ln in prefix_lens]
    contents = [rng.randbytes(rng.choice(content_lens)) for _ in range(n)]
    kidx = np.array([rng.randrange(n_keys) for _ in range(n)], dtype=np.int64)
    pidx = np.array([rng.randrange(len(prefixes)) for _ in range(n)], dtype=np.int64)
    rc = RecordContents.pack(contents)
    want = [ref_id(keys[k], prefixes[p] + c) for k, p, c in zip(kidx.tolist(), pidx.tolist(), contents)]
    return keys, kidx, prefixes, pidx, rc, contents, want


@pytest.mark.parametrize("simd", SIMD)
def test_ids_equal_hashlib_across_block_boundaries(simd):
    """Prefix + content lengths on both sides of every block boundary, every key length,
    rows of different lengths side by side (the lanes finish at different blocks)."""
    rng = random.Random(1)
    lens = BOUNDARIES + [rng.randint(0, 600) for _ in range(20)]
    keys = [rng.randbytes(k) for k in range(1, 65)]  # every key length 1..64
    for prefix_lens in ([0], [1, 31], [126, 127, 128, 129, 130], [255, 256, 257, 300]):
        _, _, prefixes, pidx, rc, contents, _ = _ids_case(rng, 300, 1, prefix_lens, lens)
        kidx = np.array([rng.randrange(64) for _ in range(300)], dtype=np.int64)
        want = [ref_id(keys[k], prefixes[p] + c) for k, p, c in zip(kidx.tolist(), pidx.tolist(), contents)]
        assert _recordid.ids(keys, kidx, prefixes, pidx, rc.buffer, rc.offsets, simd=simd) == want


@pytest.mark.parametrize("simd", SIMD)
def test_ids_of_a_subset_and_permutation_of_rows(simd):
    rng = random.Random(2)
    keys, _, prefixes, _, rc, contents, _ = _ids_case(rng, 50, 3, [20, 40], [0, 100, 200])
    rows = np.array([rng.randrange(50) for _ in range(77)], dtype=np.int64)  # repeats, any order
    kidx = np.array([rng.randrange(3) for _ in range(77)], dtype=np.int64)
    pidx = np.array([rng.randrange(2) for _ in range(77)], dtype=np.int64)
    want = [ref_id(keys[k], prefixes[p] + contents[r]) for r, k, p in zip(rows.tolist(), kidx.tolist(), pidx.tolist())]
    assert _recordid.ids(keys, kidx, prefixes, pidx, rc.buffer, rc.offsets, rows, simd=simd) == want
    assert _recordid.ids(keys, kidx[:0], prefixes, pidx[:0], rc.buffer, rc.offsets, rows[:0], simd=simd) == []


@pytest.mark.parametrize("simd", SIMD)
def test_ids_bad_inputs_raise_clear_errors(simd):
    rng = random.Random(3)
    keys, kidx, prefixes, pidx, rc, _, _ = _ids_case(rng, 10, 2, [5], [10])
    buf, off = rc.buffer, rc.offsets

    def ids(**kw):
        args = dict(keys=keys, key_index=kidx, prefixes=prefixes, prefix_index=pidx, content=buf, offsets=off)
        args.update(kw)
        return _recordid.ids(**args, simd=simd)

    with pytest.raises(ValueError, match="1 to 64"):
        ids(keys=[b""])
    with pytest.raises(ValueError, match="1 to 64"):
        ids(keys=[bytes(65)])
    with pytest.raises(TypeError, match="key_index: expected int64"):
        ids(key_index=kidx.astype(np.int32))
    with pytest.raises(TypeError, match="offsets: expected int64"):
        ids(offsets=off.astype(np.float64))
    with pytest.raises(TypeError, match=r"prefixes\[0\] is str"):
        ids(prefixes=["abc"])
    with pytest.raises(ValueError, match="prefix_index has 9 items"):
        ids(prefix_index=pidx[:9])
    with pytest.raises(ValueError, match="pass rows"):
        ids(key_index=kidx[:9], prefix_index=pidx[:9])
    with pytest.raises(IndexError, match="key_index 2"):
        ids(key_index=np.where(np.arange(10) == 9, 2, kidx))
    with pytest.raises(IndexError, match="prefix_index -1"):
        ids(prefix_index=np.where(np.arange(10) == 9, -1, pidx))
    with pytest.raises(IndexError, match=r"rows\[3\] = 10"):
        ids(rows=np.array([0, 1, 2, 10, 4, 5, 6, 7, 8, 9], dtype=np.int64))
    bad = off.copy()
    bad[-1] = len(buf) + 1  # past the content
    with pytest.raises(ValueError, match="not a range of the 100 content bytes"):
        ids(offsets=bad)
    bad = off.copy()
    bad[5] = bad[4] - 1  # backwards
    with pytest.raises(ValueError, match=r"offsets\[4:6\]"):
        ids(offsets=bad)
    with pytest.raises(ValueError, match="n \\+ 1 >= 1"):
        ids(offsets=off[:0])
    with pytest.raises(ValueError, match="one dimension"):
        ids(key_index=np.zeros((2, 5), dtype=np.int64))


# ------------------------------------------------------------------ decoded batches

# The former pure-Python packing (batch_columns before the C code): the reference the
# compact contents must equal byte for byte.
_ELEMENT = np.dtype([("id", ">u2"), ("width", "u1"), ("value", ">u8")])
_FIXED = np.dtype([("ts", ">u8"), ("pri", "u1"), ("lon", ">i4"), ("lat", ">i4"), ("alt", ">i2"),
                   ("ang", ">u2"), ("sat", "u1"), ("spd", ">u2"), ("evt", ">u2")])
_FIXED_COLUMNS = (("ts", "timestamp_ms"), ("pri", "priority"), ("lon", "lon_raw"), ("lat", "lat_raw"),
                  ("alt", "altitude"), ("ang", "angle"), ("sat", "satellites"), ("spd", "speed"),
                  ("evt", "event_io_id"))


def old_record_contents(batch) -> list[bytes]:
    n = len(batch)
    rows = np.empty(n, dtype=_FIXED)
    for field, column in _FIXED_COLUMNS:
        rows[field] = getattr(batch, column)
    fixed, size = rows.tobytes(), _FIXED.itemsize
    out = [fixed[i * size:(i + 1) * size] for i in range(n)]
    width = np.asarray(batch.io_width)
    value = np.asarray(batch.io_value).copy()
    nx = np.flatnonzero(width == 0)
    nx_len = np.asarray(batch.io_nx_len)
    value[nx] = nx_len[nx]
    el = np.empty(len(width), dtype=_ELEMENT)
    el["id"], el["width"], el["value"] = batch.io_id, width, value
    buf, esize = el.tobytes(), _ELEMENT.itemsize
    off = np.asarray(batch.io_offsets).tolist()
    out = [o + buf[off[i] * esize:off[i + 1] * esize] for i, o in enumerate(out)]
    for j in nx.tolist():
        r = int(np.searchsorted(batch.io_offsets, j, side="right")) - 1
        s = int(batch.io_value[j])
        out[r] += batch.nx_data[s:s + int(nx_len[j])]
    return out


def ref_ids(keyring, rid: RecordIds, imeis, timestamps, contents) -> list[str]:
    out = []
    for imei, ts, content in zip(imeis, timestamps, contents):
        key = keyring.derive(rid.scope, rid.route, "record_id", epoch_id(int(ts), rid.rotation)).reveal()
        out.append(ref_id(key, rid.tenant.encode() + b"\0" + canonical_imei(imei) + b"\0" + content))
    return out


MONTH_END = 1_796_083_140_000  # 2026-11-30 23:59:00 UTC: records on both sides of 1 December


def _record(rng: random.Random, codec: int, ts: int) -> AvlRecord:
    io, widths = {}, {}
    for io_id in rng.sample(range(1, 0xFF if codec == 8 else 0xFFFF), rng.randint(0, 14)):
        if codec == 0x8E and rng.random() < 0.25:
            io[io_id] = rng.randbytes(rng.choice([0, 1, 8, 17, 24, 100]))  # NX
        else:
            w = rng.choice((1, 2, 4, 8))
            io[io_id] = rng.getrandbits(8 * w)
            widths[io_id] = w
    return AvlRecord(timestamp_ms=ts, priority=rng.randint(0, 3), lon=rng.randint(-(1 << 31), (1 << 31) - 1) / 1e7,
                     lat=rng.randint(-(1 << 31), (1 << 31) - 1) / 1e7, altitude=rng.randint(-32768, 32767),
                     angle=rng.randint(0, 0xFFFF), satellites=rng.randint(0, 255), speed=rng.randint(0, 0xFFFF),
                     event_io_id=rng.randint(0, 0xFF if codec == 8 else 0xFFFF), io=io, io_width=widths,
                     generation_type=rng.randint(0, 7) if codec == 16 else None)


def random_batch(seed: int, make_imei, n_frames: int = 60):
    """Frames of every codec (8E with NX values), from 7 devices, timestamps over
    several days around a month boundary (so several epochs); plus a retransmission."""
    rng = random.Random(seed)
    devices = [make_imei(35_209_308_000_000 + 7919 * k) for k in range(7)]
    frames, imeis = [], []
    for _ in range(n_frames):
        codec = rng.choice((8, 0x8E, 0x8E, 16))
        recs = tuple(_record(rng, codec, MONTH_END + rng.randint(-3, 3) * 86_400_000 + rng.randint(0, 119_999))
                     for _ in range(rng.randint(1, 6)))
        frames.append(codecs.encode(AvlPacket(codec=codec, records=recs)))
        imeis.append(rng.choice(devices))
    frames.append(frames[0])  # a device resends a packet: same records, same ids
    imeis.append(imeis[0])
    batch = codecs.decode_batch(frames, cap=1 << 20)
    assert not batch.errors
    return batch, np.asarray(imeis, dtype=object)[batch.frame_index]


@pytest.mark.parametrize("seed", range(8))
def test_compact_contents_equal_the_former_bytes_per_record(seed, make_imei):
    batch, _ = random_batch(seed, make_imei)
    old = old_record_contents(batch)
    assert (np.asarray(batch.io_width) == 0).any()  # NX elements are covered
    new = record_contents(batch)
    assert isinstance(new, RecordContents) and len(new) == len(old)
    assert list(new) == old
    assert [new[i] for i in range(len(old))] == old
    assert new.buffer == b"".join(old)
    # a selection of rows (new io_offsets, nx_data shared): the same bytes per record
    rows = np.random.default_rng(seed).permutation(len(batch))[: len(batch) // 2]
    assert list(record_contents(batch.select(rows))) == [old[i] for i in rows.tolist()]
    assert list(new.take(rows)) == [old[i] for i in rows.tolist()]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rotation", ["monthly", "daily"])
def test_record_ids_from_compact_contents_equal_the_python_reference(seed, rotation, keyring, make_imei):
    batch, imeis = random_batch(seed, make_imei)
    ts = np.asarray(batch.timestamp_ms).astype(np.int64)
    old = old_record_contents(batch)
    compact = record_contents(batch)
    n = len(batch)
    for route, tenant in (("processor", "acme-logistics"), ("controller", "acme-logistics")):
        rid = RecordIds(keyring, tenant=tenant, route=route, rotation=rotation)
        want = ref_ids(keyring, rid, imeis.tolist(), ts.tolist(), old)
        assert len({epoch_id(int(t), rotation) for t in ts.tolist()}) > 1  # several keys in one call
        assert rid.compute(imeis, ts, compact).tolist() == want
        assert rid.compute(imeis, ts, old).tolist() == want           # a list of bytes still works
        assert rid.compute(imeis.astype(str), ts, compact).tolist() == want  # U15 IMEIs too
        ids = rid.compute(imeis, ts, compact)
        fi = np.asarray(batch.frame_index)
        assert ids[fi == fi[-1]].tolist() == ids[fi == 0].tolist()  # the resent packet's records keep their ids
        rows = np.random.default_rng(seed).permutation(n)[: n // 3]
        assert rid.compute(imeis[rows], ts[rows], compact.take(rows)).tolist() == [want[i] for i in rows.tolist()]


def test_columns_take_keeps_the_compact_contents(keyring, make_imei, policies):
    from fleetcloak.anonymize.transform import ProcessorTransform

    batch, imeis = random_batch(11, make_imei)
    pol = policies.tenants["acme-logistics"]
    t = ProcessorTransform(pol, keyring)
    cols = columns_from_batch(batch, imeis, io_ids=t.io_ids_needed())
    assert isinstance(cols.content, RecordContents)
    idx = np.flatnonzero(np.arange(len(batch)) % 3 != 1)[::-1]
    sub = cols.take(idx)
    assert isinstance(sub.content, RecordContents)
    assert list(sub.content) == [cols.content[i] for i in idx.tolist()]
    full = t.apply(cols).record_id
    assert t.apply(sub).record_id.tolist() == full[idx].tolist()
    listed = cols.take(np.arange(len(batch)))
    listed.content = list(cols.content)  # the list form takes the same rows
    assert list(listed.take(idx).content) == list(sub.content)


# ------------------------------------------------------------------ RecordContents


def test_record_contents_sequence_behaviour():
    items = [b"a", b"", b"ccc", b"dd"]
    rc = RecordContents.pack(items)
    assert len(rc) == 4 and list(rc) == items and rc[-1] == b"dd" and rc[1:3] == [b"", b"ccc"]
    with pytest.raises(IndexError):
        rc[4]
    sub = rc.take(np.array([3, 0, 3]))
    assert list(sub) == [b"dd", b"a", b"dd"] and sub.buffer is rc.buffer
    assert list(sub.take([2, 1])) == [b"dd", b"a"] and sub[-1] == b"dd"
    assert list(rc.take(np.array([True, False, True, False]))) == [b"a", b"ccc"]
    assert list(rc.take([])) == [] and len(RecordContents.pack([])) == 0
    assert "4 records" in repr(rc)


# ------------------------------------------------------------------ contents(): bad input


def _columns(batch):
    return {name: np.array(getattr(batch, name), dtype=dtype) for name, dtype in _CONTENT_COLUMNS}


def _contents(cols, nx):
    return _recordid.contents(*(cols[name] for name, _ in _CONTENT_COLUMNS), nx)


def test_contents_bad_inputs_raise_clear_errors(make_imei):
    batch, _ = random_batch(5, make_imei, n_frames=10)
    nx = batch.nx_data
    good = _columns(batch)
    buf, off = _contents(good, nx)
    assert buf == b"".join(old_record_contents(batch))
    assert np.frombuffer(off, dtype=np.int64).tolist()[-1] == len(buf)

    def fails(exc, match, nx_data=nx, **change):
        cols = dict(good, **change)
        with pytest.raises(exc, match=match):
            _contents(cols, nx_data)

    fails(TypeError, "timestamp_ms: expected uint64", timestamp_ms=good["timestamp_ms"].astype(np.int64))
    fails(TypeError, "lat_raw: expected int32", lat_raw=good["lat_raw"].astype(np.float32))
    fails(TypeError, "io_value: expected uint64 in native byte order", io_value=good["io_value"].astype(">u8"))
    fails(TypeError, "speed: expected a C-contiguous buffer", speed=list(good["speed"]))
    fails(TypeError, "angle: expected a C-contiguous", angle=np.repeat(good["angle"], 2)[::2])
    fails(ValueError, "one dimension", priority=good["priority"].reshape(1, -1))
    fails(ValueError, "altitude has", altitude=good["altitude"][:-1])
    fails(ValueError, "io_offsets has", io_offsets=good["io_offsets"][:-1])
    fails(ValueError, "io_width has", io_width=good["io_width"][:-1])
    off_bad = good["io_offsets"].copy()
    off_bad[-1] = len(good["io_id"]) + 1
    fails(ValueError, "is not a range of the", io_offsets=off_bad)
    off_bad = good["io_offsets"].copy()
    off_bad[1] = -1
    fails(ValueError, r"io_offsets\[0:2\]", io_offsets=off_bad)
    j = int(np.flatnonzero(good["io_width"] == 0)[0])
    for start, length in ((len(nx), 1), (len(nx) + 5, 0), (2**64 - 1, 2), (len(nx) - 1, 2)):
        val, lens = good["io_value"].copy(), good["io_nx_len"].copy()
        val[j], lens[j] = start, length
        fails(ValueError, f"NX element {j} .* run past nx_data", io_value=val, io_nx_len=lens)
    assert good["io_nx_len"].sum() > 0
    fails(ValueError, "run past nx_data", nx_data=b"")  # NX bytes, but none at hand
    fails(TypeError, "nx_data: expected a contiguous bytes-like", nx_data="text")


def test_contents_of_an_empty_batch():
    empty = {name: np.zeros(1 if name == "io_offsets" else 0, dtype=dtype) for name, dtype in _CONTENT_COLUMNS}
    buf, off = _contents(empty, b"")
    assert buf == b"" and np.frombuffer(off, dtype=np.int64).tolist() == [0]


@pytest.mark.parametrize("seed", range(6))
def test_columns_from_batch_io_equal_the_batch_accessors(seed, make_imei):
    """The IO columns, picked from the wanted ids' elements in one pass, are what the
    batch's own io_column (fixed-size ids) and io_bytes (ids sent NX anywhere in the
    batch, identifiers built from bytes) give, on whole batches and row selections."""
    from fleetcloak.anonymize.batch_columns import _bytes_ids

    batch, imeis = random_batch(seed, make_imei)
    ids = np.asarray(batch.io_id)
    for b in (batch, batch.select(np.arange(len(batch))[::-2])):
        im = np.asarray([imeis[0]] * len(b))
        present = sorted(set(np.asarray(b.io_id).tolist()))
        nx_ids = set(np.asarray(b.io_id)[np.asarray(b.io_width) == 0].tolist())
        for wanted in (range(65536), present[::3], [78, 147, 148, 256, 391, 70000]):
            cols = columns_from_batch(b, im, io_ids=wanted)
            expect = sorted((set(wanted) | {391}) & set(present))
            assert list(cols.io) == expect
            for io_id in expect:
                got = cols.io[io_id]
                if io_id in nx_ids or io_id in _bytes_ids({"FMB"}):
                    assert got.dtype == object and got.tolist() == b.io_bytes(io_id)
                else:
                    assert got.dtype == np.uint64 and got.tolist() == b.io_column(io_id, 0).tolist()
    assert ids.size and (np.asarray(batch.io_width) == 0).any()

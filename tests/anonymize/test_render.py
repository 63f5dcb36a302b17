"""anonymize.render: the C-built JSON of output records equals the readable dicts of
ProcessorResult.records() / ControllerResult.records() (the output contract)."""
from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.anonymize import _render
from fleetcloak.anonymize.batch_columns import columns_from_batch
from fleetcloak.anonymize.render import controller_json, processor_json
from fleetcloak.anonymize.policy import IoFilter
from fleetcloak.anonymize.transform import (KEEP, OMIT, ControllerTransform, GroupGate, ProcessorResult,
                                           ProcessorTransform)
from fleetcloak.codecs import AvlPacket, AvlRecord, decode_batch, encode

IMEIS = ["356307042441013", "352093081452251", "490154203237518"]
CARD = b"DRIVERCARD123456"

# IO elements a record may carry: identifiers (iButton, multi-part driver card, ICCID,
# VIN as NX), cell ids (stripped in private mode), private mode 391, denied 21/241, plain
io_values = st.fixed_dictionaries({}, optional={
    78: st.sampled_from([0, 0x0102030405060708, 0x1111111111111111]),
    147: st.just(int.from_bytes(CARD[:8], "big")),
    148: st.just(int.from_bytes(CARD[8:], "big")),
    11: st.integers(0, 2**64 - 1), 14: st.integers(0, 2**64 - 1),
    256: st.sampled_from([b"WVWZZZ1JZXW000001", b"", b"\x00\xff\"\\"]),
    205: st.integers(0, 2**16 - 1), 206: st.integers(0, 2**16 - 1), 287: st.integers(0, 255),
    391: st.sampled_from([0, 1]), 21: st.integers(0, 5), 241: st.integers(0, 2**32 - 1),
    239: st.integers(0, 1), 66: st.integers(0, 2**16 - 1), 16: st.integers(0, 2**32 - 1),
    10_000: st.binary(max_size=40),
})


def _record(ts, lat, lon, io):
    return AvlRecord(timestamp_ms=ts, priority=1, lon=lon, lat=lat, altitude=-12, angle=359, satellites=7,
                     speed=88, event_io_id=0, io=io)


packets = st.lists(st.tuples(
    st.integers(0, 2),
    st.lists(st.tuples(st.integers(0, 40 * 86_400_000), st.integers(-900_000_000, 900_000_000),
                       st.integers(-1_800_000_000, 1_800_000_000), io_values), min_size=1, max_size=4),
), min_size=1, max_size=6)


def _batch(t0, pkts):
    frames, imeis = [], []
    for dev, recs in pkts:
        rs = tuple(_record(t0 - dt, la / 1e7, lo / 1e7, io) for dt, la, lo, io in recs)
        frames.append(encode(AvlPacket(codec=0x8E, records=rs)))
        imeis.append(IMEIS[dev])
    batch = decode_batch(frames)
    assert not batch.errors
    return batch, np.asarray(imeis, dtype=object)[batch.frame_index]


@pytest.mark.parametrize("tenant", ["acme-logistics", "nordic-taxi", "heavy-haul"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pkts=packets, pick=st.randoms(use_true_random=False))
def test_processor_json_equals_the_record_dicts(keyring, t0, policies, tenant, pkts, pick):
    batch, imei = _batch(t0, pkts)
    t = ProcessorTransform(policies.tenants[tenant], keyring)
    res = t.apply(columns_from_batch(batch, imei, io_ids=t.io_ids_needed()))
    raw_io = [dict(r.io) for r in batch.records()]
    assert [json.loads(v) for v in processor_json(res, batch)] == res.records(raw_io)
    rows = np.array(pick.sample(range(len(res)), k=pick.randint(0, len(res))), dtype=np.int64)
    want = res.records([raw_io[i] for i in rows.tolist()], rows=rows)
    assert [json.loads(v) for v in processor_json(res, batch, rows)] == want


@pytest.mark.parametrize("tenant", ["acme-logistics", "nordic-taxi", "heavy-haul"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pkts=packets)
def test_controller_json_equals_the_record_dicts(keyring, t0, policies, tenant, pkts):
    batch, imei = _batch(t0, pkts)
    t = ControllerTransform(policies.service, keyring, policies.tenants[tenant], gate=GroupGate(1))
    res = t.apply(columns_from_batch(batch, imei, io_ids=range(65536)))
    assert [json.loads(v) for v in controller_json(res)] == res.records()


def test_the_multipart_pseudonym_goes_out_when_its_first_part_is_missing(keyring, t0, policies):
    lo = int.from_bytes(CARD[8:], "big")
    batch, imei = _batch(t0, [(0, [(0, 0, 0, {148: lo, 239: 1})])])
    t = ProcessorTransform(policies.tenants["acme-logistics"], keyring)
    res = t.apply(columns_from_batch(batch, imei, io_ids=t.io_ids_needed()))
    (out,) = [json.loads(v) for v in processor_json(res, batch)]
    assert set(out["io"]) == {"147", "239"} and out["io"]["147"] == res.driver[0]
    assert out["io"]["147"].startswith("drv_")


# ----------------------------------------------------------------------- values
finite = st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | finite | st.text() | st.binary(),
                      lambda _: st.nothing())


@settings(max_examples=300, deadline=None)
@given(v=values, x=st.floats(), k=st.integers(-(10**12), 10**12))
def test_values_read_back_exactly(v, x, k):
    (out,) = _render.records(1, [
        ("v", _render.K_OBJ, [v]), ("c", _render.K_CONST, v),
        ("f", _render.K_F64, np.array([x])), ("q", _render.K_F64, np.array([k / 1e7])),
        ("i", _render.K_F64INT, np.array([float(k)])), ("t", _render.K_I64, np.array([k], dtype=np.int64)),
        ("b", _render.K_BOOL, np.array([k % 2 == 0])),
    ], None, None)
    got = json.loads(out)
    want = v.hex() if isinstance(v, bytes) else v
    assert got["v"] == want and got["c"] == want and type(got["v"]) is type(want)
    if math.isfinite(x):
        assert got["f"] == x and math.copysign(1, got["f"]) == math.copysign(1, x) or x == 0
    else:
        assert got["f"] is None
    assert got["q"] == k / 1e7 and got["i"] == k and got["t"] == k and got["b"] is (k % 2 == 0)


def test_seven_decimal_fast_path_is_exact_next_to_its_rounding_edges():
    """The fast path rounds v * 1e7 by hand and keeps only an exact k / 1e7: raw
    positions, their neighbours one ulp away and values half-way between two 7-decimal
    numbers all read back exactly, in repr's digits when repr has no exponent."""
    rng = np.random.default_rng(11)
    k = rng.integers(-1_800_000_000, 1_800_000_000, 5000)
    raw = k / 1e7
    vals = np.concatenate([raw, np.nextafter(raw, np.inf), np.nextafter(raw, -np.inf), (k + 0.5) / 1e7,
                           [0.5e-7, -0.5e-7, 1.5e-7, 2.5e-7, 99.99999995, -0.0, 0.0]])
    out = _render.records(len(vals), [("v", _render.K_F64, vals)], None, None)
    for v, text in zip(vals.tolist(), out):
        got = json.loads(text)["v"]
        assert got == v and math.copysign(1, got) == math.copysign(1, v), (v, text)
        if "e" not in repr(v):
            assert text == b'{"v":%s}' % repr(v).encode(), (v, text)


def test_repeated_floats_come_from_the_text_cache_unchanged():
    """Coarsened positions repeat; their texts are cached by value in a 4096-slot table
    kept from call to call: thousands of distinct values (many sharing a slot), repeated
    and interleaved, each read back exactly, with -0.0, NaN and the 7-decimal fast path
    among them; the same texts again from a second call, under another field."""
    rng = np.random.default_rng(3)
    distinct = np.concatenate([(np.arange(3000) + 0.5) * (180.0 / 40_000),  # grid centres
                               rng.uniform(-180, 180, 3000).round(7), [0.0, -0.0, np.nan, 1e-300, -5e-5]])
    col = distinct[rng.integers(0, len(distinct), 40_000)]
    out = _render.records(len(col), [("v", _render.K_F64, col)], None, None)
    again = _render.records(len(col), [("w", _render.K_F64, col[::-1].copy())], None, None)
    assert again[::-1] == [o.replace(b'"v"', b'"w"') for o in out]
    for v, text in zip(col.tolist(), out):
        got = json.loads(text)["v"]
        if math.isnan(v):
            assert got is None
        else:
            assert got == v and math.copysign(1, got) == math.copysign(1, v)


def test_nan_is_null_and_rows_pick_and_permute():
    out = _render.records(3, [("x", _render.K_F64INT, np.array([1.9, np.nan, -2.7])),
                              ("s", _render.K_OBJ, ["a", "b", "c"])], np.array([2, 1, 2], dtype=np.int64), None)
    assert [json.loads(o) for o in out] == [{"x": -2, "s": "c"}, {"x": None, "s": "b"}, {"x": -2, "s": "c"}]
    assert out[0] == b'{"x":-2,"s":"c"}'


# ------------------------------------------------------------- the IO object in C
# Batches built column by column (what render reads of a decoded batch), so that a
# record can name an id twice, as the wire allows; results built field by field, so
# that every rule of record_io meets every kind of value. The oracle is the readable
# reference: ProcessorResult.records() dumped by json (compact, UTF-8), byte for byte.

def _dumps(d: dict) -> bytes:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


def _fake_batch(records):
    """records: one list of (io_id, value) per record; value int (fixed) or bytes (NX)."""
    ids, width, value, nxlen, nx, offsets = [], [], [], [], bytearray(), [0]
    for pairs in records:
        for io_id, v in pairs:
            ids.append(io_id)
            if isinstance(v, bytes):
                width.append(0), value.append(len(nx)), nxlen.append(len(v))
                nx += v
            else:
                width.append(8), value.append(v), nxlen.append(0)
        offsets.append(len(ids))
    return SimpleNamespace(io_offsets=np.array(offsets, dtype=np.int64), io_id=np.array(ids, dtype=np.uint16),
                           io_width=np.array(width, dtype=np.uint8), io_value=np.array(value, dtype=np.uint64),
                           io_nx_len=np.array(nxlen, dtype=np.uint16), nx_data=bytes(nx))


def _result(n, rnd, *, io_filter=IoFilter(), replace=None, multipart=None, strip=None, dropped=()):
    nan_or = lambda: [rnd.choice([math.nan, float(rnd.randint(-5, 400))]) for _ in range(n)]  # noqa: E731
    cols = {name: (None if name in dropped else np.array(nan_or()))
            for name in ("altitude", "angle", "speed", "satellites")}
    return ProcessorResult(
        tenant="t-é", record_id=np.array([f"r{i}" for i in range(n)], dtype=object),
        device=np.array([rnd.choice(["dev_a", "dev_\"b\"", "d\u00e9v\n"]) for _ in range(n)], dtype=object),
        driver=np.array([rnd.choice([None, "drv_x", 0]) for _ in range(n)], dtype=object),
        timestamp_ms=np.array([rnd.randint(0, 2**53) for _ in range(n)], dtype=np.int64),
        lat=np.array([rnd.choice([math.nan, -0.0, 52.5123456, 52.51234567891234, 1e-300]) for _ in range(n)]),
        lon=np.array([rnd.choice([math.nan, 13.25, -179.99999999999997]) for _ in range(n)]),
        **cols,
        private=np.array([rnd.random() < 0.5 for _ in range(n)]),
        location_suppressed=np.array([rnd.choice([None, "privacy_zone"]) for _ in range(n)], dtype=object),
        io_replace=replace or {}, strip_io=np.array(strip if strip is not None else [False] * n, dtype=bool),
        io_filter=io_filter, io_multipart=multipart or {})


def _raw_io(pairs):
    return dict(pairs)  # a repeated id: its first place, its last value


IDS = [1, 16, 21, 78, 147, 148, 205, 206, 239, 256, 287, 636, 10_000, 65535]
REPLACEMENTS = st.sampled_from([KEEP, OMIT, "drv_é\"q", None, 0, 7, b"\x01\xff", 2.5])
element = st.tuples(st.sampled_from(IDS), st.integers(0, 2**64 - 1) | st.binary(max_size=12))
io_filters = st.sampled_from([IoFilter(), IoFilter(deny=(21, 205)), IoFilter(allow=(1, 78, 147, 206, 256, 65535)),
                              IoFilter(allow=(16, 148)), IoFilter(deny=(147,))])


@settings(max_examples=300, deadline=None)
@given(records=st.lists(st.lists(element, max_size=8), min_size=1, max_size=12), io_filter=io_filters,
       rnd=st.randoms(use_true_random=False), data=st.data())
def test_io_objects_equal_the_reference_byte_for_byte(records, io_filter, rnd, data):
    n = len(records)
    replaced = data.draw(st.lists(st.sampled_from([78, 147, 148, 256, 21, 65535]), unique=True))
    replace = {io_id: np.array(data.draw(st.lists(REPLACEMENTS, min_size=n, max_size=n)) + [None], dtype=object)[:n]
               for io_id in replaced}
    multipart = {147: (147, 148)} if {147, 148} <= set(replaced) else {}
    if 65535 in replaced and data.draw(st.booleans()):
        multipart[65535] = (65535, 1, 16)
    res = _result(n, rnd, io_filter=io_filter, replace=replace, multipart=multipart,
                  strip=[rnd.random() < 0.5 for _ in range(n)],
                  dropped=rnd.sample(["altitude", "angle"], k=rnd.randint(0, 2)))
    batch = _fake_batch(records)
    raw_io = [_raw_io(pairs) for pairs in records]
    assert processor_json(res, batch) == [_dumps(d) for d in res.records(raw_io)]
    rows = np.array([rnd.randrange(n) for _ in range(rnd.randint(0, 2 * n))], dtype=np.int64)
    want = res.records([raw_io[i] for i in rows.tolist()], rows=rows)
    assert processor_json(res, batch, rows) == [_dumps(d) for d in want]
    assert processor_json(res, None, rows) == [_dumps({k: v for k, v in d.items() if k != "io"}) for d in want]


def test_io_objects_nx_replacements_extras_and_repeated_ids():
    # record 0: ids 1, 2 (NX), 1 again (first place, last value, as a dict); record 1: 78
    # replaced, 148 (a second part) left out, its first part 147 added; record 2: a cell
    # id stripped, 78 keeps its own value
    batch = _fake_batch([[(1, 5), (2, b"\xab\xcd"), (1, 7)], [(78, 9), (148, 3), (16, 1)], [(205, 4), (78, 8)]])
    res = _result(3, random.Random(0), strip=[False, False, True],
                  replace={78: np.array(["drv_x", "drv_y", KEEP], dtype=object),
                           147: np.array([None, "drv_card", None], dtype=object),
                           148: np.array([OMIT, OMIT, OMIT], dtype=object)},
                  multipart={147: (147, 148)})
    out = processor_json(res, batch)
    assert [o[o.index(b'"io":'):] for o in out] == [b'"io":{"1":7,"2":"abcd"}}',
                                                    b'"io":{"78":"drv_y","16":1,"147":"drv_card"}}',
                                                    b'"io":{"78":8}}']


def _spec(io_offsets=(0, 1), io_id=(2,), nx=b"\x00\xab\xcd", keep=lambda i: True, replace=None, multipart=None):
    a = np.array
    return [a(io_offsets, dtype=np.int64), a(io_id, dtype=np.uint16), a([0] * len(io_id), dtype=np.uint8),
            a([1] * len(io_id), dtype=np.uint64), a([2] * len(io_id), dtype=np.uint16), nx, keep,
            np.zeros(65536, dtype=np.uint8), np.zeros(len(io_offsets) - 1, dtype=bool), replace or {},
            multipart or [], (KEEP, OMIT)]


@pytest.mark.parametrize("change, error, match", [
    ({0: np.array([0, 2], dtype=np.int64)}, ValueError, "io_offsets"),
    ({0: np.array([1, 0], dtype=np.int64)}, ValueError, "io_offsets"),
    ({3: np.array([50], dtype=np.uint64)}, ValueError, "outside nx_data"),
    ({1: np.array([2], dtype=np.int32)}, ValueError, "items of"),
    ({7: np.zeros(10, dtype=np.uint8)}, ValueError, "65536"),
    ({8: np.zeros(0, dtype=bool)}, ValueError, "rows needed"),
    ({6: 3}, TypeError, "callable"),
    ({6: lambda i: 1 / 0}, ZeroDivisionError, None),
    ({9: {2: ["x"] * 0}}, ValueError, "io replace of IO 2 has 0 rows, 1 needed"),
    ({9: {70_000: ["x"]}}, ValueError, "not an IO id"),
    ({9: {2: ("x",)}}, TypeError, "not a list"),
    ({10: [(147, (148,))]}, TypeError, "multipart"),
    ({10: [(147, (70_000,), ["x"])]}, ValueError, "not an IO id"),
    ({11: (KEEP,)}, TypeError, "sentinels"),
])
def test_bad_io_is_refused_with_what_is_wrong(change, error, match):
    assert _render.records(1, [], None, tuple(_spec())) == [b'{"io":{"2":"abcd"}}']
    spec = _spec()
    for k, v in change.items():
        spec[k] = v
    with pytest.raises(error, match=match):
        _render.records(1, [], None, tuple(spec))
    with pytest.raises(TypeError, match="12 items"):
        _render.records(1, [], None, tuple(spec[:11]))


def test_the_filter_is_asked_once_per_distinct_id():
    asked = []
    spec = _spec(io_offsets=(0, 3, 5), io_id=(7, 8, 7, 8, 9), nx=b"\x00" * 3,
                 keep=lambda i: asked.append(i) or i != 8)
    out = _render.records(2, [], None, tuple(spec))
    assert sorted(asked) == [7, 8, 9] and out == [b'{"io":{"7":"0000"}}', b'{"io":{"9":"0000"}}']


def test_strings_needing_escapes_anywhere_in_them():
    """The string writer looks at 8 bytes at a time: a byte to escape at every place of
    a word, in strings of every length around it, ASCII and not."""
    for n in range(0, 20):
        for at in range(n):
            for c in ["\"", "\\", "\n", "\x00", "\x1f", "é", "\x7f", " ", "~"]:
                s = "a" * at + c + "b" * (n - at - 1)
                (out,) = _render.records(1, [("s", _render.K_CONST, s), ("t", _render.K_OBJ, [s])], None, None)
                assert out == _dumps({"s": s, "t": s})


def test_integers_of_every_length():
    vals = [0, 9, 10, 99, 100, 2**63 - 1, -(2**63)]
    vals += [s * (10**k + d) for k in range(19) for d in (-1, 0, 1) for s in (1, -1)]
    out = _render.records(len(vals), [("v", _render.K_I64, np.array(vals, dtype=np.int64)),
                                      ("o", _render.K_OBJ, vals)], None, None)
    assert out == [_dumps({"v": v, "o": v}) for v in vals]
    ids = list(range(0, 65536, 7)) + [65535]
    batch = _fake_batch([[(i, 2**64 - 1 - i)] for i in ids])
    out = _render.records(len(ids), [], None, tuple(
        [batch.io_offsets, batch.io_id, batch.io_width, batch.io_value, batch.io_nx_len, batch.nx_data,
         lambda i: True, np.zeros(65536, dtype=np.uint8), np.zeros(len(ids), dtype=bool), {}, [], (KEEP, OMIT)]))
    assert out == [_dumps({"io": {str(i): 2**64 - 1 - i}}) for i in ids]


def test_bad_fields_are_refused_naming_the_field():
    with pytest.raises(TypeError, match="field x"):
        _render.records(1, [("x", _render.K_OBJ, (1,))], None, None)
    with pytest.raises(TypeError, match="y holds a object"):
        _render.records(1, [("y", _render.K_OBJ, [object()])], None, None)
    with pytest.raises(ValueError, match="field z has 1 rows, 2 needed"):
        _render.records(2, [("z", _render.K_I64, np.zeros(1, dtype=np.int64))], None, None)
    with pytest.raises(ValueError, match="rows\\[0\\] is negative"):
        _render.records(1, [("z", _render.K_I64, np.zeros(1, dtype=np.int64))], np.array([-1]), None)
    with pytest.raises(ValueError, match="escaping"):
        _render.records(1, [('a"b', _render.K_CONST, 1)], None, None)


def test_packets_json_is_the_python_join_per_group():
    import random

    from fleetcloak.anonymize.render import packets_json

    rng = random.Random(2)
    for _ in range(200):
        values = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30))) for _ in range(rng.randrange(0, 40))]
        cuts = sorted(rng.randrange(0, len(values) + 1) for _ in range(rng.randrange(0, 6)))
        bounds = [0, *cuts, len(values)]
        want = [b'{"records":[' + b",".join(values[a:b]) + b"]}" for a, b in zip(bounds[:-1], bounds[1:])]
        assert packets_json(values, np.array(bounds)) == want


def test_packets_json_refuses_bounds_out_of_order_or_outside_and_non_bytes():
    from fleetcloak.anonymize import _render
    from fleetcloak.anonymize.render import packets_json

    with pytest.raises(ValueError, match=r"bounds\[1\] = 3 is out of order or outside the 2 values"):
        packets_json([b"a", b"b"], np.array([0, 3]))
    with pytest.raises(ValueError, match=r"bounds\[2\] = 1"):
        packets_json([b"a", b"b"], np.array([0, 2, 1]))
    with pytest.raises(TypeError, match=r"values\[1\] is not bytes"):
        packets_json([b"a", "b"], np.array([0, 2]))
    with pytest.raises(TypeError, match="int64"):
        _render.groups([b"a"], np.array([0, 1], dtype=np.int32), b"", b"", b"")
    assert packets_json([], np.array([0])) == [] and packets_json([b"x"], np.array([0, 1])) == [b'{"records":[x]}']

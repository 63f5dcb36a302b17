"""anonymize.render: the C-built JSON of output records equals the readable dicts of
ProcessorResult.records() / ControllerResult.records() (the output contract)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.anonymize import _render
from fleetcloak.anonymize.batch_columns import columns_from_batch
from fleetcloak.anonymize.render import controller_json, processor_json
from fleetcloak.anonymize.transform import ControllerTransform, GroupGate, ProcessorTransform
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


def test_repeated_floats_come_from_the_text_cache_unchanged():
    """Coarsened positions repeat; their texts are cached by value in a 512-slot table:
    thousands of distinct values (many sharing a slot), repeated and interleaved, each
    read back exactly, with -0.0, NaN and the 7-decimal fast path among them."""
    rng = np.random.default_rng(3)
    distinct = np.concatenate([(np.arange(3000) + 0.5) * (180.0 / 40_000),  # grid centres
                               rng.uniform(-180, 180, 3000).round(7), [0.0, -0.0, np.nan, 1e-300, -5e-5]])
    col = distinct[rng.integers(0, len(distinct), 40_000)]
    out = _render.records(len(col), [("v", _render.K_F64, col)], None, None)
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


def _io(el, bounds, ids, width, value, nxlen, nx, rep_pos=(), rep_val=(), extra_rows=(), extra=()):
    a = lambda v, t: np.array(v, dtype=t)  # noqa: E731
    return (a(el, np.int64), a(bounds, np.int64), a(ids, np.uint16), a(width, np.uint8), a(value, np.uint64),
            a(nxlen, np.uint16), nx, a(rep_pos, np.int64), list(rep_val), a(extra_rows, np.int64), list(extra))


def test_io_objects_nx_replacements_extras_and_repeated_ids():
    # record 0: ids 1, 2(NX), 1 again (first place, last value, as a dict); record 1: 3 replaced, + extra
    io = _io([0, 1, 2, 3], [0, 3, 4], [1, 2, 1, 3], [1, 0, 4, 8], [5, 1, 7, 9], [0, 2, 0, 0], b"\x00\xab\xcd",
             rep_pos=[3], rep_val=["drv_x"], extra_rows=[1], extra=[("147", "drv_y")])
    out = _render.records(2, [("r", _render.K_I64, np.arange(2, dtype=np.int64))], None, io)
    assert [json.loads(o) for o in out] == [{"r": 0, "io": {"1": 7, "2": "abcd"}},
                                            {"r": 1, "io": {"3": "drv_x", "147": "drv_y"}}]
    assert out[0] == b'{"r":0,"io":{"1":7,"2":"abcd"}}'
    # a replaced repeated id: the last occurrence's replacement wins
    io = _io([0, 1], [0, 2], [4, 4], [1, 1], [1, 2], [0, 0], b"", rep_pos=[0], rep_val=["first"])
    assert json.loads(_render.records(1, [], None, io)[0]) == {"io": {"4": 2}}


@pytest.mark.parametrize("bad, match", [
    (lambda io: (np.array([9], dtype=np.int64),) + io[1:], "not an element"),
    (lambda io: io[:1] + (np.array([0, 2], dtype=np.int64),) + io[2:], "bounds"),
    (lambda io: io[:4] + (np.array([50], dtype=np.uint64),) + io[5:], "outside nx_data"),
    (lambda io: io[:7] + (np.array([3], dtype=np.int64), ["x"]) + io[9:], "rep_pos"),
    (lambda io: io[:2] + (np.array([1], dtype=np.int32),) + io[3:], "items of"),
    (lambda io: io[:9] + (np.array([1], dtype=np.int64), [("1", 2)]), "extra_rows"),
])
def test_bad_io_is_refused_with_what_is_wrong(bad, match):
    io = _io([0], [0, 1], [2], [0], [1], [2], b"\x00\xab\xcd")
    assert _render.records(1, [], None, io) == [b'{"io":{"2":"abcd"}}']
    with pytest.raises(ValueError, match=match):
        _render.records(1, [], None, bad(io))


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

"""From decode_batch's columns to the transforms, with real encoded frames."""
from __future__ import annotations

import json

import numpy as np
import pytest

codecs = pytest.importorskip("fleetcloak.codecs")
from fleetcloak.anonymize.batch_columns import columns_from_batch, record_contents  # noqa: E402
from fleetcloak.anonymize.transform import ProcessorTransform  # noqa: E402
from fleetcloak.codecs.packets import AvlPacket, AvlRecord  # noqa: E402

IMEI = "356307042441013"


def _rec(i: int, t0: int, io: dict | None = None) -> AvlRecord:
    base = {78: 0x0102030405060708 if i % 2 else 0, 239: 1, 256: b"WVWZZZ1JZXW000001", 21: i}
    base.update(io or {})
    return AvlRecord(timestamp_ms=t0 + i * 1000, priority=0, lon=13.4 + i * 1e-4, lat=52.5, altitude=30, angle=90,
                     satellites=9, speed=40 + i, event_io_id=0, io=base)


def test_retransmitted_records_keep_their_record_id_across_packets_and_batches(keyring, t0, policies):
    recs = [_rec(i, t0) for i in range(6)]
    first = codecs.decode_batch([codecs.encode(AvlPacket(codec=0x8E, records=tuple(recs[:4])))])
    # the device resends records 2..5 in another packet, in another batch, behind another frame
    other = codecs.encode(AvlPacket(codec=0x8E, records=(_rec(9, t0, {256: b"OTHERVIN000000000"}),)))
    second = codecs.decode_batch([other, codecs.encode(AvlPacket(codec=0x8E, records=tuple(recs[2:])))])
    pol = policies.tenants["acme-logistics"]
    t = ProcessorTransform(pol, keyring)
    ids1 = t.apply(columns_from_batch(first, np.array([IMEI] * len(first)), io_ids=t.io_ids_needed())).record_id
    ids2 = t.apply(columns_from_batch(second, np.array([IMEI] * len(second)), io_ids=t.io_ids_needed())).record_id
    assert ids1[2] == ids2[1] and ids1[3] == ids2[2]
    assert len(set(ids1.tolist()) | set(ids2.tolist())) == 7
    c1, c2 = record_contents(first), record_contents(second)
    assert c1[2] == c2[1]


def test_batch_through_the_processor_transform(keyring, t0, policies):
    recs = tuple(_rec(i, t0) for i in range(4))
    batch = codecs.decode_batch([codecs.encode(AvlPacket(codec=0x8E, records=recs))])
    pol = policies.tenants["acme-logistics"]
    t = ProcessorTransform(pol, keyring)
    res = t.apply(columns_from_batch(batch, np.array([IMEI] * len(batch)), io_ids=t.io_ids_needed()))
    raw_io = [dict(r.io) for r in batch.records()]
    out = res.records(raw_io)
    text = json.dumps(out)
    assert IMEI not in text and "WVWZZZ1JZXW000001" not in text and "0102030405060708" not in text
    assert out[1]["driver"].startswith("drv_") and out[0]["io"]["78"] == 0
    assert out[0]["io"]["256"].startswith("veh_") and "21" not in out[0]["io"]  # 21 is on the denylist


def _bytes_column_reference(n, record, width, value, nx_len, nx_data):
    """The per-element Python the C bytes_column replaced."""
    col = [None] * n
    for r, w, v, ln in zip(record.tolist(), width.tolist(), value.tolist(), nx_len.tolist()):
        col[r] = nx_data[v:v + ln] if w == 0 else v.to_bytes(w, "big")
    return col


def test_bytes_column_in_c_is_the_per_element_python():
    from fleetcloak.anonymize.batch_columns import _bytes_column

    rng = np.random.default_rng(11)
    nx_data = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    for _ in range(200):
        n = int(rng.integers(0, 40))
        m = int(rng.integers(0, 60)) if n else 0
        record = rng.integers(0, max(n, 1), m).astype(np.int64)
        width = rng.choice(np.array([0, 1, 2, 4, 8], dtype=np.uint8), m)
        nx_len = np.where(width == 0, rng.integers(0, 300, m), 0).astype(np.uint16)
        value = np.where(width == 0, rng.integers(0, 3700, m),
                         rng.integers(0, 2**63, m) >> (64 - 8 * np.maximum(width, 1)).astype(np.int64)).astype(np.uint64)
        want = _bytes_column_reference(n, record, width, value, nx_len, nx_data)
        got = _bytes_column(n, record, width, value, nx_len, nx_data)
        assert got.dtype == object and got.tolist() == want


def test_bytes_column_of_one_width_shares_one_object_per_value():
    """A decoded batch's usual column (one width, one element per record at most): the
    same bytes as the per-element path, equal values one shared object."""
    from fleetcloak.anonymize.batch_columns import _bytes_column

    rng = np.random.default_rng(12)
    for w in (1, 2, 4, 8):
        n = 500
        record = np.flatnonzero(rng.random(n) < 0.4).astype(np.int64)
        m = record.shape[0]
        width = np.full(m, w, dtype=np.uint8)
        value = rng.integers(0, 7, m).astype(np.uint64) * (2 ** (8 * w - 4))
        nx_len = np.zeros(m, dtype=np.uint16)
        got = _bytes_column(n, record, width, value, nx_len, b"")
        assert got.tolist() == _bytes_column_reference(n, record, width, value, nx_len, b"")
        by_value: dict = {}
        for v in got.tolist():
            if v is not None:
                assert by_value.setdefault(v, v) is v  # one object per distinct value


def test_bytes_column_refuses_what_does_not_fit():
    from fleetcloak.codecs import _avlbatch

    one = lambda dt, v: np.array([v], dtype=dt)  # noqa: E731
    with pytest.raises(IndexError, match=r"record\[0\] = 3 is not a row of 3"):
        _avlbatch.bytes_column(3, one(np.int64, 3), one(np.uint8, 1), one(np.uint64, 1), one(np.uint16, 0), b"")
    with pytest.raises(ValueError, match="NX element 0 lies outside nx_data"):
        _avlbatch.bytes_column(1, one(np.int64, 0), one(np.uint8, 0), one(np.uint64, 2), one(np.uint16, 3), b"abcd")
    with pytest.raises(OverflowError, match="does not fit 1 bytes"):
        _avlbatch.bytes_column(1, one(np.int64, 0), one(np.uint8, 1), one(np.uint64, 256), one(np.uint16, 0), b"")
    with pytest.raises(ValueError, match="width\\[0\\] = 3"):
        _avlbatch.bytes_column(1, one(np.int64, 0), one(np.uint8, 3), one(np.uint64, 1), one(np.uint16, 0), b"")
    with pytest.raises(TypeError, match="record must have 8-byte items"):
        _avlbatch.bytes_column(1, one(np.int32, 0), one(np.uint8, 1), one(np.uint64, 1), one(np.uint16, 0), b"")
    with pytest.raises(ValueError, match="differ in length"):
        _avlbatch.bytes_column(1, np.zeros(2, np.int64), one(np.uint8, 1), one(np.uint64, 1), one(np.uint16, 0), b"")

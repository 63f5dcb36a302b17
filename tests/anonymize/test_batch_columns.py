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

"""Private mode: the device flag, local private hours (DST, midnight), both routes."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from fleetcloak.anonymize.policy import PrivateHours, TenantPolicy
from fleetcloak.anonymize.private_mode import private_hours_mask, utc_offsets_ms
from fleetcloak.anonymize.service_policy import ServicePolicy
from fleetcloak.anonymize.transform import PRIVATE_MODE, Columns, ControllerTransform, GroupGate, ProcessorTransform

BERLIN = ZoneInfo("Europe/Berlin")


def _ms(*args, tz=BERLIN) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_offsets_follow_dst_exactly():
    # DST ends 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC)
    ts = np.array([_ms(2026, 10, 25, 0, 59, tz=ZoneInfo("UTC")), _ms(2026, 10, 25, 1, 0, tz=ZoneInfo("UTC")),
                   _ms(2026, 7, 1, 12, 0), _ms(2026, 1, 1, 12, 0)])
    assert (utc_offsets_ms(ts, BERLIN) // 3_600_000).tolist() == [2, 1, 2, 1]


def test_hours_cross_midnight_and_respect_days():
    hours = [PrivateHours(days=("fri",), start="22:00", end="06:00")]
    cases = {
        _ms(2026, 11, 20, 21, 59): False,  # Friday before the window
        _ms(2026, 11, 20, 22, 0): True,
        _ms(2026, 11, 21, 5, 59): True,    # Saturday morning: the tail of Friday's window
        _ms(2026, 11, 21, 6, 0): False,
        _ms(2026, 11, 21, 23, 0): False,   # Saturday night: not listed
        _ms(2026, 11, 19, 23, 0): False,   # Thursday night
    }
    got = private_hours_mask(np.array(list(cases)), hours, BERLIN)
    assert got.tolist() == list(cases.values())
    # in summer time the same local hours are another UTC instant
    assert private_hours_mask(np.array([_ms(2026, 7, 17, 22, 30)]), hours, BERLIN).tolist() == [True]
    whole = [PrivateHours(days=("sun",), start="00:00", end="00:00")]
    assert private_hours_mask(np.array([_ms(2026, 11, 22, 0, 0), _ms(2026, 11, 22, 23, 59), _ms(2026, 11, 23, 0, 0)]), whole, BERLIN).tolist() == [True, True, False]


def test_processor_strips_and_controller_drops(keyring):
    pol = TenantPolicy.model_validate({
        "tenant": "acme", "timezone": "Europe/Berlin",
        "processor": {"private_mode": {"hours": [{"days": ["sat"], "start": "00:00", "end": "00:00"}],
                                        "strip": ["position", "speed", "heading", "cell_ids"]}},
    })
    ts = np.array([_ms(2026, 11, 20, 12, 0), _ms(2026, 11, 20, 12, 1), _ms(2026, 11, 21, 12, 0)])
    cols = Columns(imei=np.array(["356307042441013"] * 3), timestamp_ms=ts, lat=np.array([52.5] * 3), lon=np.array([13.4] * 3),
                   speed=np.array([50, 60, 70]), angle=np.array([90, 90, 90]), altitude=np.array([30, 30, 30]),
                   io={391: np.array([0, 1, 0], dtype=np.uint64)})
    p = ProcessorTransform(pol, keyring).apply(cols)
    assert p.private.tolist() == [False, True, True]
    recs = p.records([{391: 0, 205: 7, 206: 8, 21: 3}, {391: 1, 205: 7, 206: 8, 21: 3}, {391: 0, 205: 7, 206: 8, 21: 3}])
    assert recs[0]["lat"] == 52.5 and recs[0]["speed"] == 50 and recs[0]["io"]["205"] == 7
    for r in recs[1:]:
        assert r["lat"] is None and r["lon"] is None and r["speed"] is None and r["angle"] is None
        assert r["location_suppressed"] == PRIVATE_MODE and r["private"] is True
        assert "205" not in r["io"] and "206" not in r["io"] and r["io"]["21"] == 3
        assert r["altitude"] == 30  # not in this policy's strip list
    c = ControllerTransform(ServicePolicy(service="s", min_group_size=1), keyring, pol, gate=GroupGate(1)).apply(cols)
    assert c.keep.tolist() == [True, False, False] and c.drops == {"private_mode": 2}
    assert len(c.records()) == 1

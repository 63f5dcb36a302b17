"""Privacy zones: the index agrees with shapely, and nothing inside a zone keeps a position."""
from __future__ import annotations

import numpy as np
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore
from fleetcloak.anonymize.policy import TenantPolicy
from fleetcloak.anonymize.service_policy import ServicePolicy
from fleetcloak.anonymize.transform import PRIVACY_ZONE, Columns, ControllerTransform, GroupGate, ProcessorTransform
from fleetcloak.anonymize.zones import ZoneIndex

_KR = Keyring(MemoryKeyStore(), MasterKey.generate())


def _brute(geoms, lat, lon):
    ref = np.full(lat.size, -1)
    for i in range(len(geoms) - 1, -1, -1):
        ref[shapely.intersects_xy(geoms[i], lon, lat)] = i
    return ref


def test_index_matches_brute_force_few_many_and_overlapping_zones(monkeypatch):
    rng = np.random.default_rng(3)
    geoms = [shapely.Point(x, y).buffer(r) for (x, y), r in zip(rng.uniform(0, 1, (300, 2)), rng.uniform(0.005, 0.2, 300))]
    lat, lon = rng.uniform(-0.1, 1.1, 50_000), rng.uniform(-0.1, 1.1, 50_000)
    lat[:3], lon[:3] = np.nan, np.nan
    for k in (1, 5, 60, 300):  # the larger ones overlap: the first zone wins
        got = ZoneIndex(geoms[:k]).locate(lat, lon)
        assert np.array_equal(got, _brute(geoms[:k], lat, lon))
    # candidate pairs in many small groups give the same answer
    monkeypatch.setattr("fleetcloak.anonymize.zones._MAX_PAIRS", 500)
    assert np.array_equal(ZoneIndex(geoms).locate(lat, lon), _brute(geoms, lat, lon))
    # a point on a boundary counts as inside
    sq = ZoneIndex([shapely.box(0, 0, 1, 1)])
    assert sq.inside(np.array([0.0, 0.5, 1.0000001]), np.array([0.5, 1.0, 0.5])).tolist() == [True, True, False]


def _square(x, y, d):
    return {"type": "Polygon", "coordinates": [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]}


def _policy(precision: str, replace: bool) -> TenantPolicy:
    loc = {"precision": precision} | ({"grid_m": 1000} if precision == "grid" else {})
    zones = [
        {"name": "a", "geometry": _square(13.37, 52.50, 0.01)} | ({"replace_with": [13.30, 52.40]} if replace else {}),
        {"name": "b", "geometry": {"type": "MultiPolygon", "coordinates": [_square(13.40, 52.52, 0.003)["coordinates"], _square(13.29, 52.47, 0.003)["coordinates"]]}},
    ]
    return TenantPolicy.model_validate({"tenant": "acme", "processor": {"location": loc, "privacy_zones": zones}})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), precision=st.sampled_from(["exact", "grid"]), replace=st.booleans())
def test_nothing_inside_a_zone_keeps_a_position(seed, precision, replace):
    rng = np.random.default_rng(seed)
    n = 3000
    lat = rng.uniform(52.45, 52.55, n)
    lon = rng.uniform(13.25, 13.45, n)
    pol = _policy(precision, replace)
    cols = Columns(imei=np.array(["356307042441013"] * n), timestamp_ms=np.full(n, 1_795_000_000_000),
                   lat=lat, lon=lon, speed=np.full(n, 50))
    zones = [z.shape for z in pol.processor.privacy_zones]
    orig_in = np.zeros(n, bool)
    for g in zones:
        orig_in |= shapely.intersects_xy(g, lon, lat)
    res = ProcessorTransform(pol, _KR).apply(cols)
    assert orig_in.any()
    # every record that was in a zone: no position, or exactly the zone's named replacement
    inside = res.location_suppressed == PRIVACY_ZONE
    assert np.all(inside[orig_in])
    named = np.isclose(res.lat, 52.40) & np.isclose(res.lon, 13.30)
    assert np.all(np.isnan(res.lat[orig_in]) | named[orig_in])
    # and no emitted position outside the named replacement point lies in a zone
    has = ~np.isnan(res.lat) & ~named
    for g in zones:
        assert not shapely.intersects_xy(g, res.lon[has], res.lat[has]).any()
    # the analytics route: no cell centre inside a zone either
    ctrl = ControllerTransform(ServicePolicy(service="s", location={"grid_m": 1000}, min_group_size=1), _KR, pol, gate=GroupGate(1))
    c = ctrl.apply(cols)
    ok = c.keep & ~np.isnan(c.lat)
    assert not orig_in[ok].any()
    for g in zones:
        assert not shapely.intersects_xy(g, c.lon[ok], c.lat[ok]).any()

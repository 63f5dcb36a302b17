"""The worker-facing transforms: output contract, record_id, identifiers, analytics gates."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.policy import TenantPolicy
from fleetcloak.anonymize.service_policy import ServicePolicy
from fleetcloak.anonymize.transform import BY_POLICY, MIN_GROUP, Columns, ControllerTransform, GroupGate, ProcessorTransform

IMEIS = ["356307042441013", "352093085130093", "860759047001235"]
IBUTTON = 0x01000012345678AB
CARD_HI, CARD_LO = int.from_bytes(b"DRV12345", "big"), int.from_bytes(b"67890\0\0\0", "big")


def _cols(t0, n=9, family="FMB", content=True):
    imei = np.array([IMEIS[i % 3] for i in range(n)])
    ts = t0 + np.arange(n, dtype=np.int64) * 1000
    lat = 52.0 + np.arange(n) * 0.001
    lon = 13.0 + np.arange(n) * 0.001
    io = {78: np.array([IBUTTON if i % 2 else 0 for i in range(n)], dtype=np.uint64),
          11: np.array([8937020] * n, dtype=np.uint64), 14: np.array([1234567] * n, dtype=np.uint64),
          256: np.array([b"WVWZZZ1JZXW000001"] * n, dtype=object),
          239: np.array([1] * n, dtype=np.uint64)}
    c = Columns(imei=imei, timestamp_ms=ts, lat=lat, lon=lon, speed=np.full(n, 57), angle=np.full(n, 100),
                altitude=np.full(n, 123), satellites=np.full(n, 9), io=io, family=family)
    if content:
        c.content = [f"raw-{i}".encode() for i in range(n)]
    return c


def _raw_io(cols, i):
    return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.io.items()}


def test_processor_output_contract_and_no_raw_identifiers(keyring, t0, policies):
    pol = policies.tenants["acme-logistics"]
    cols = _cols(t0)
    res = ProcessorTransform(pol, keyring).apply(cols)
    recs = res.records([_raw_io(cols, i) for i in range(len(cols))])
    for r in recs:
        for k in ("record_id", "tenant", "device", "driver", "timestamp_ms", "lat", "lon"):
            assert k in r
        assert r["tenant"] == "acme-logistics" and r["device"].startswith("dev_2026m11_")
    text = json.dumps(recs)
    for raw in IMEIS + ["8937020", "1234567", format(IBUTTON, "x"), format(IBUTTON, "X"), str(IBUTTON), "WVWZZZ1JZXW000001", b"WVWZZZ1JZXW000001".hex()]:
        assert raw not in text, raw
    assert recs[1]["driver"].startswith("drv_") and recs[0]["driver"] is None
    assert recs[0]["io"]["78"] == 0 and recs[1]["io"]["78"] == recs[1]["driver"]
    assert recs[0]["io"]["11"].startswith("sim_") and "14" not in recs[0]["io"]
    assert recs[0]["io"]["256"].startswith("veh_")
    assert recs[0]["lat"] == 52.0 and recs[0]["speed"] == 57


def test_kept_identifiers_and_io_filter(keyring, t0, policies):
    pol = policies.tenants["nordic-taxi"]  # keeps the IMEI, allowlist [1, 16, 66, 78, 239, 240, 391], 250 m grid
    cols = _cols(t0)
    res = ProcessorTransform(pol, keyring).apply(cols)
    recs = res.records([_raw_io(cols, i) for i in range(len(cols))])
    assert recs[0]["device"] == IMEIS[0]
    assert set(recs[1]["io"]) == {"78", "239"} and recs[1]["io"]["78"].startswith("drv_")
    assert recs[0]["lat"] != 52.0  # snapped to the 250 m grid


def test_drop_fields_precision_none_and_families(keyring, t0):
    pol = TenantPolicy.model_validate({"tenant": "acme", "processor": {"location": {"precision": "none"}, "drop_fields": ["altitude", "heading"]}})
    cols = _cols(t0, family=np.array(["FMB", "64x", "FMB"] * 3))
    cols.io[195] = np.array([CARD_HI] * 9, dtype=np.uint64)
    cols.io[196] = np.array([CARD_LO] * 9, dtype=np.uint64)
    res = ProcessorTransform(pol, keyring).apply(cols)
    recs = res.records()
    assert all(r["lat"] is None and r["location_suppressed"] == BY_POLICY for r in recs)
    assert "altitude" not in recs[0] and "angle" not in recs[0] and recs[0]["speed"] == 57
    # on the 64x rows, 195/196 is the driver card; on FMB rows it means something else (geofence)
    from fleetcloak.anonymize.pseudonyms import Pseudonymizer
    from fleetcloak.anonymize.transform import KEEP

    p = Pseudonymizer(keyring, tenant="acme")
    card = p.at("driver", b"DRV1234567890", t0)
    assert recs[1]["driver"] == recs[4]["driver"] == card  # 64x rows: the card
    assert recs[0]["driver"] is None  # FMB, no iButton: 195/196 are not identifiers there
    assert recs[3]["driver"] == p.at("driver", IBUTTON.to_bytes(8, "big"), t0)  # FMB iButton (78)
    assert res.io_replace[195][1] == card and res.io_replace[195][0] is KEEP
    assert res.io_replace[78][1] is KEEP  # 78 means nothing identifying on 64x
    io = res.record_io(0, {195: 5, 78: 0})
    assert io == {"195": 5, "78": 0}


def test_record_id_deterministic_duplicates_and_routes(keyring, t0, policies, master):
    pol = policies.tenants["acme-logistics"]
    cols = _cols(t0)
    cols.content[4] = cols.content[1]  # a retransmitted record: same bytes ...
    cols.imei[4] = cols.imei[1]        # ... from the same device
    a = ProcessorTransform(pol, keyring).apply(cols).record_id
    again = ProcessorTransform(pol, Keyring(keyring.store, master)).apply(cols).record_id
    assert a.tolist() == again.tolist()
    assert a[1] == a[4] and len(set(a.tolist())) == len(a) - 1
    c = ControllerTransform(policies.service, keyring, pol, gate=GroupGate(1)).apply(cols).record_id
    assert not set(a.tolist()) & set(c.tolist())
    # without raw bytes the id comes from the decoded columns, still deterministic
    nc = _cols(t0, content=False)
    x = ProcessorTransform(pol, keyring).apply(nc).record_id
    assert x.tolist() == ProcessorTransform(pol, keyring).apply(_cols(t0, content=False)).record_id.tolist()
    assert len(set(x.tolist())) == len(x)
    assert all(len(r) == 26 for r in x.tolist())


def test_controller_route(keyring, t0, policies):
    pol = policies.tenants["acme-logistics"]
    svc = ServicePolicy(service="s", location={"h3_resolution": 7}, allow=["driver", "speed", "heading", "ignition"], min_group_size=1)
    cols = _cols(t0)
    res = ControllerTransform(svc, keyring, pol, gate=GroupGate(1)).apply(cols)
    recs = res.records()
    assert len(recs) == 9
    r = recs[1]
    assert r["device"].startswith("dev_2026m11_") and r["driver"].startswith("drv_")
    assert r["timestamp_ms"] % 900_000 == 0 and r["speed"] == 50 and r["heading"] == 90 and r["ignition"] == 1
    assert len(r["cell"]) == 15 and r["lat"] is not None
    assert "altitude" not in r and "io" not in r
    proc = ProcessorTransform(pol, keyring).apply(cols)
    assert not set(proc.device.tolist()) & set(res.device.tolist())
    text = json.dumps(recs)
    assert not any(i in text for i in IMEIS)


def test_analytics_refused_and_erased_subjects(keyring, t0, policies):
    heavy = policies.tenants["heavy-haul"]
    res = ControllerTransform(policies.service, keyring, heavy).apply(_cols(t0))
    assert not res.keep.any() and res.drops == {"analytics_refused": 9} and res.records() == []
    acme = policies.tenants["acme-logistics"]
    keyring.erase_subject("acme-logistics", "device", IMEIS[0].encode())
    keyring.erase_subject("acme-logistics", "driver", IBUTTON.to_bytes(8, "big"))
    ctrl = ControllerTransform(policies.service, keyring, acme, gate=GroupGate(1))
    res = ctrl.apply(_cols(t0))
    # rows 0,3,6: erased device; rows 1,3,5,7: erased driver
    assert res.keep.tolist() == [False, False, True, False, True, False, False, False, True]
    assert res.drops == {"subject_erased": 6}


def test_min_group_size_gate(keyring, t0):
    pol = TenantPolicy(tenant="acme")
    svc = ServicePolicy(service="s", location={"grid_m": 1000}, min_group_size=3)
    ctrl = ControllerTransform(svc, keyring, pol)

    def batch(imeis):
        n = len(imeis)
        return Columns(imei=np.array(imeis), timestamp_ms=np.full(n, t0), lat=np.full(n, 52.0), lon=np.full(n, 13.0))

    r1 = ctrl.apply(batch(IMEIS[:2] * 3))
    assert np.isnan(r1.lat).all() and set(r1.location_suppressed.tolist()) == {MIN_GROUP}
    r2 = ctrl.apply(batch([IMEIS[2], IMEIS[0]]))  # the third distinct device arrives
    assert not np.isnan(r2.lat).any() and r2.cell[0].startswith("g1000:")
    # another cell is its own group
    far = Columns(imei=np.array(IMEIS), timestamp_ms=np.full(3, t0), lat=np.full(3, 10.0), lon=np.full(3, 10.0))
    assert not np.isnan(ctrl.apply(far).lat).any()
    gate = GroupGate(2, horizon=2)
    for b in range(10):
        gate.admit(np.array([1]), np.array([b]), np.array(["d"]))
    assert len(gate._groups) <= 2


@pytest.mark.parametrize("route", ["processor", "controller"])
def test_empty_batch(keyring, t0, policies, route):
    pol = policies.tenants["acme-logistics"]
    cols = Columns(imei=np.array([], dtype="U15"), timestamp_ms=np.array([], dtype=np.int64), lat=np.array([]), lon=np.array([]))
    t = ProcessorTransform(pol, keyring) if route == "processor" else ControllerTransform(policies.service, keyring, pol)
    res = t.apply(cols)
    assert res.records() == []


def test_controller_accounts_for_every_row(keyring, t0, policies):
    pol = TenantPolicy.model_validate({"tenant": "acme", "processor": {"private_mode": {"honour_device_flag": True}}})
    cols = _cols(t0, n=30)
    cols.io[391] = np.array([1 if i % 5 == 0 else 0 for i in range(30)], dtype=np.uint64)
    keyring.erase_subject("acme", "device", IMEIS[1].encode())
    res = ControllerTransform(policies.service, keyring, pol).apply(cols)
    assert int(res.keep.sum()) + sum(res.drops.values()) == 30
    assert set(res.drops) == {"private_mode", "subject_erased"}


def test_controller_skips_rows_quietly_and_keeps_the_rest_as_without_them(keyring, t0, policies):
    """skip (the stream's duplicates): never kept, in no drop count, in no group; the
    other rows come out as from the Columns without the skipped rows."""
    pol = TenantPolicy.model_validate({"tenant": "acme", "processor": {"private_mode": {"honour_device_flag": True}}})
    svc = ServicePolicy(service="s", location={"h3_resolution": 7}, allow=["driver", "speed"], min_group_size=2)
    cols = _cols(t0, n=30)
    cols.io[391] = np.array([1 if i % 5 == 0 else 0 for i in range(30)], dtype=np.uint64)
    skip = np.array([i % 3 == 0 for i in range(30)])
    got = ControllerTransform(svc, keyring, pol, gate=GroupGate(2)).apply(cols, skip=skip)
    want = ControllerTransform(svc, keyring, pol, gate=GroupGate(2)).apply(cols.take(np.flatnonzero(~skip)))
    assert not got.keep[skip].any()
    assert got.drops == want.drops and int(got.keep.sum()) + sum(got.drops.values()) == int((~skip).sum())
    assert got.records() == want.records()
    refused = ControllerTransform(svc, keyring, policies.tenants["heavy-haul"]).apply(cols, skip=skip)
    assert refused.drops == {"analytics_refused": 20}


def test_controller_on_the_processor_columns_reuses_its_identifier_work(keyring, t0, policies):
    """Both routes of the same Columns derive an identifier group's canonical forms and
    distinct values once (Columns.memo); the pseudonyms stay the routes' own."""
    from fleetcloak.anonymize import transform

    pol = policies.tenants["acme-logistics"]
    svc = ServicePolicy(service="s", location={"h3_resolution": 7}, allow=["driver"], min_group_size=1)
    cols = _cols(t0, n=12)
    cols.io[147] = np.array([b"DRV12345" if i % 4 else None for i in range(12)], dtype=object)
    cols.io[148] = np.array([b"67890\0\0\0" if i % 4 else None for i in range(12)], dtype=object)
    calls = []
    real = transform._group_canonicals
    transform._group_canonicals = lambda *a: calls.append(a[0].ids) or real(*a)
    try:
        proc = ProcessorTransform(pol, keyring).apply(cols)
        ctrl = ControllerTransform(svc, keyring, pol, gate=GroupGate(1)).apply(cols)
        fresh = ControllerTransform(svc, keyring, pol, gate=GroupGate(1)).apply(cols.take(np.arange(12)))
    finally:
        transform._group_canonicals = real
    assert calls.count((147, 148)) == 2  # the processor's, and the fresh Columns' (take: no memo)
    assert ctrl.records() == fresh.records()
    drivers = set(ctrl.driver.tolist()) - {None}
    assert drivers and not drivers & set(proc.driver.tolist())  # the service's keys, not the tenant's


def test_keys_prepared_once_for_a_policy_set(keyring, t0, policies):
    done = keyring.prepare(policies, t0, backlog=False)
    assert done["heavy-haul"][:2] == ["2026m11d18", "2026m11d19"] and "static" in done["heavy-haul"]
    assert done["service"] == ["2026m11", "2026m12"]
    names = set(keyring.store.names())
    assert {"root/nordic-taxi/2026w47", "root/nordic-taxi/2026w48", "root/nordic-taxi/static"} <= names
    # the worker then finds them (and mints nothing) on a read-only keyring
    ro = Keyring(keyring.store, keyring.master, create=False)
    ProcessorTransform(policies.tenants["acme-logistics"], ro).apply(_cols(t0))
    assert set(keyring.store.names()) == names


def test_prepare_covers_the_retention_window_so_a_backlog_finds_its_epoch(keyring, t0, policies):
    done = keyring.prepare(policies, t0)
    pol = policies.tenants["acme-logistics"]
    from fleetcloak.anonymize.epochs import epoch_id

    oldest = epoch_id(t0 - pol.retention_days * 86_400_000, pol.pseudonym_rotation)
    assert done["acme-logistics"][0] == oldest and epoch_id(t0, pol.pseudonym_rotation) in done["acme-logistics"]
    names = set(keyring.store.names())
    ro = Keyring(keyring.store, keyring.master, create=False)  # a worker that may mint nothing
    old = t0 - (pol.retention_days - 2) * 86_400_000
    ProcessorTransform(pol, ro).apply(_cols(old))  # a two-day-short-of-expiry backlog
    assert set(keyring.store.names()) == names


def test_controller_creates_new_subject_salts_in_one_store_write(tmp_path, master, t0, policies):
    from fleetcloak.anonymize.keystore import FileKeyStore

    store = FileKeyStore(tmp_path / "k.json")
    writes = []
    real = store._write
    store._write = lambda entries: (writes.append(len(entries)), real(entries))[1]
    kr = Keyring(store, master)
    kr.prepare(policies, t0)
    before = len(writes)
    n = 500
    imeis = np.array([f"35630704244{i:04d}" for i in range(n)])
    cols = Columns(imei=imeis, timestamp_ms=np.full(n, t0), lat=np.full(n, 52.0), lon=np.full(n, 13.0))
    ControllerTransform(policies.service, kr, policies.tenants["acme-logistics"]).apply(cols)
    assert len(writes) - before == 1
    assert len(store.names("subject/acme-logistics/")) == n


def test_out_of_range_timestamp_is_a_clear_error(keyring, policies):
    cols = Columns(imei=np.array([IMEIS[0]]), timestamp_ms=np.array([2**62], dtype=np.int64), lat=np.zeros(1), lon=np.zeros(1))
    with pytest.raises(ValueError, match="timestamp out of range"):
        ProcessorTransform(policies.tenants["acme-logistics"], keyring).apply(cols)


def test_io_from_decode_json_shapes(keyring, t0, policies):
    """Values as the `fleetcloak decode` JSON gives them: ints in object arrays, NX as hex."""
    pol = policies.tenants["acme-logistics"]
    n = 3
    cols = Columns(imei=np.array([IMEIS[0]] * n, dtype=object), timestamp_ms=np.full(n, t0), lat=np.zeros(n), lon=np.zeros(n),
                   io={78: np.array([IBUTTON, 0, None], dtype=object),
                       256: np.array([b"WVWZZZ1JZXW000001".hex(), None, b"WVWZZZ1JZXW000001".hex()], dtype=object)})
    res = ProcessorTransform(pol, keyring).apply(cols)
    fast = ProcessorTransform(pol, keyring).apply(_cols(t0, n=2))
    assert res.driver[0] == fast.driver[1] and res.driver[1] is None and res.driver[2] is None
    assert res.io_replace[78][1] == 0
    assert res.io_replace[256][0] == res.io_replace[256][2] == fast.io_replace[256][0]


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(imeis=st.lists(st.integers(10**14, 10**15 - 1), min_size=1, max_size=8),
       ibuttons=st.lists(st.integers(2**40, 2**64 - 1), min_size=1, max_size=8),
       card=st.text(alphabet="ABCDEFGHJKLMNPRSTUVWXYZ", min_size=12, max_size=16))
def test_no_raw_identifier_survives_either_route(keyring, t0, policies, imeis, ibuttons, card):
    n = 16
    imei = np.array([str(imeis[i % len(imeis)]) for i in range(n)])
    ib = np.array([ibuttons[i % len(ibuttons)] for i in range(n)], dtype=np.uint64)
    raw = card.encode().ljust(16, b"\0")
    cols = Columns(imei=imei, timestamp_ms=np.full(n, t0), lat=np.full(n, 48.0), lon=np.full(n, 2.0),
                   io={78: ib, 147: np.array([int.from_bytes(raw[:8], "big")] * n, dtype=np.uint64),
                       148: np.array([int.from_bytes(raw[8:], "big")] * n, dtype=np.uint64)})
    raw_io = [{78: int(ib[i]), 147: int(cols.io[147][i]), 148: int(cols.io[148][i])} for i in range(n)]
    pol = policies.tenants["acme-logistics"]
    out = json.dumps(ProcessorTransform(pol, keyring).apply(cols).records(raw_io))
    out += json.dumps(ControllerTransform(policies.service, keyring, pol, gate=GroupGate(1)).apply(cols).records())
    for v in imeis:
        assert str(v) not in out
    for v in ibuttons:
        assert str(v) not in out and format(v, "016x") not in out and format(v, "016X") not in out
    assert card not in out


def test_multipart_identifier_with_a_missing_first_part(keyring, t0, policies):
    pol = policies.tenants["acme-logistics"]
    cols = Columns(imei=np.array([IMEIS[0]]), timestamp_ms=np.array([t0]), lat=np.zeros(1), lon=np.zeros(1),
                   io={148: np.array([CARD_LO], dtype=np.uint64)})
    res = ProcessorTransform(pol, keyring).apply(cols)
    io = res.record_io(0, {148: CARD_LO, 239: 1})
    assert set(io) == {"147", "239"} and io["147"] == res.driver[0] and io["147"].startswith("drv_")


def test_group_canonicals_of_sparse_parts_match_the_every_row_pass():
    """Only rows carrying a value go through the dict pass; the others share one None
    canonical. Same canonical per row as canonicalising every row, for object, integer
    and mixed parts, empty values included."""
    from fleetcloak.anonymize.canonical import canonical_group
    from fleetcloak.anonymize.transform import _group_canonicals
    from fleetcloak.codecs.iodict import identifier_groups

    groups = {g.ids: g for g in identifier_groups("FMB")}
    card, iccid, barcode = groups[(147, 148)], groups[(11, 14)], groups[(264,)]
    rng = np.random.default_rng(7)
    n = 200
    pick = rng.integers(0, 4, size=(3, n))
    obj = [np.array([[None, b"", b"DRV1", b"DRV2"][k] for k in row], dtype=object) for row in pick]
    ints = np.array([[0, 0, 8937020, 42][k] for k in pick[0]], dtype=np.uint64)
    for group, parts in ((card, [obj[0], obj[1]]), (card, [None, obj[1]]), (card, [obj[0], ints]),
                         (iccid, [ints, obj[2]]), (barcode, [obj[2]]), (barcode, [np.full(n, None, dtype=object)]),
                         (barcode, [obj[0][:0]])):
        m = len(parts[-1])
        canon, inv = _group_canonicals(group, "FMB", parts, m)
        rows = [[None if p is None else (p[i].item() if hasattr(p[i], "item") else p[i]) for p in parts] for i in range(m)]
        assert [canon[j] for j in inv.tolist()] == [canonical_group(group, r, "FMB") for r in rows]


def test_imeis_coded_gives_the_distinct_pseudonyms(keyring, t0):
    from fleetcloak.anonymize.pseudonyms import Pseudonymizer

    p = Pseudonymizer(keyring, tenant="acme-logistics", route="controller", rotation="daily")
    imei = np.array([IMEIS[i % 3] for i in range(12)])
    ts = t0 + np.arange(12, dtype=np.int64) * 3_600_000 * 5  # spans several daily epochs
    out, uniq, codes = p.imeis_coded(imei, ts, on_erased="none")
    assert out.tolist() == p.imeis(imei, ts, on_erased="none").tolist()
    assert uniq[codes].tolist() == out.tolist()
    assert len(set(uniq.tolist())) == len(uniq)
    out2, uniq2, codes2 = p.imeis_coded(imei.astype(object), ts, on_erased="none")  # the per-value path
    assert out2.tolist() == out.tolist() and uniq2[codes2].tolist() == out.tolist()


def test_group_gate_with_device_codes_admits_as_with_devices():
    rng = np.random.default_rng(3)
    devs = np.array([f"dev_{i}" for i in range(9)], dtype=object)
    a, b = GroupGate(3), GroupGate(3)
    for batch in range(4):
        n = 300
        cells = rng.integers(0, 5, n)
        buckets = np.full(n, batch // 2) + rng.integers(0, 2, n)
        di = rng.integers(0, 9, n)
        extra = np.concatenate([devs, np.array(["unused"], dtype=object)])  # a code no row uses
        assert a.admit(cells, buckets, devs[di]).tolist() == b.admit(cells, buckets, None, device_codes=(extra, di)).tolist()


def test_group_gate_admits_as_a_plain_set_per_group_does():
    """The vectorised gate against the rule written plainly: a row is admitted when its
    (bucket, cell) has k distinct devices, counting what the gate saw before, groups of
    buckets older than the horizon behind the newest forgotten."""
    rng = np.random.default_rng(11)
    k, horizon = 3, 3
    gate, seen, latest = GroupGate(k, horizon=horizon), {}, None
    for batch in range(40):
        n = int(rng.integers(1, 400))
        cells = rng.integers(0, 12, n) * 1_000_003
        buckets = batch // 3 + rng.integers(-2, 2, n)   # late rows, and time moving on
        devices = np.array([f"d{i}" for i in rng.integers(0, 14, n)], dtype=object)
        for b, c, d in zip(buckets.tolist(), cells.tolist(), devices.tolist()):
            seen.setdefault((b, c), set()).add(d)
        want = np.array([len(seen[(b, c)]) >= k for b, c in zip(buckets.tolist(), cells.tolist())])
        assert gate.admit(cells, buckets, devices).tolist() == want.tolist(), batch
        newest = int(buckets.max())
        if latest is None or newest > latest:
            latest = newest
            seen = {key: s for key, s in seen.items() if key[0] > latest - horizon}
    assert set(gate._groups) == {b for b, _ in seen}


def test_distinct_imeis_shared_by_pseudonyms_and_record_ids(keyring, t0, policies):
    """Columns.imei_codes (one dict pass kept with the columns) gives the same device
    pseudonyms and record ids as each step deduplicating on its own."""
    from fleetcloak.anonymize.record_id import RecordIds

    cols = _cols(t0, n=30)
    cols.imei = cols.imei.astype(object)
    codes = cols.imei_codes()
    assert codes is cols.imei_codes() and codes[0][codes[1]].tolist() == cols.imei.tolist()
    pol = policies.tenants["acme-logistics"]
    t = ProcessorTransform(pol, keyring)
    assert t.devices(cols).tolist() == t.pseudo.imeis(cols.imei, cols.timestamp_ms).tolist()
    ids = RecordIds(keyring, tenant="acme-logistics")
    assert (ids.compute(cols.imei, cols.timestamp_ms, cols.content, distinct=codes).tolist()
            == ids.compute(cols.imei, cols.timestamp_ms, cols.content).tolist())
    cols.imei = cols.imei[::-1].copy()  # new column: the kept codes are not reused
    assert cols.imei_codes()[0][cols.imei_codes()[1]].tolist() == cols.imei.tolist()

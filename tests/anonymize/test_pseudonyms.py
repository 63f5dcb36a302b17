"""Pseudonym format, determinism, separation, caching, zero iButton, collisions."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.anonymize.canonical import canonical_group, canonical_iccid, canonical_imei
from fleetcloak.anonymize.epochs import epoch_id
from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore
from fleetcloak.anonymize.policy import KIND_PREFIX
from fleetcloak.anonymize.pseudonyms import Pseudonymizer
from fleetcloak.codecs.iodict import identifier_groups

PSEUDONYM_RE = re.compile(r"^(dev|drv|sim|veh|usr|sen|bcn|can)_([0-9a-z]+)_([a-z2-7]{26})$")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# One keyring for the property tests (hypothesis re-runs the body, fixtures don't reset).
_KR = Keyring(MemoryKeyStore(), MasterKey.generate(ephemeral=False))
ids = st.binary(min_size=1, max_size=24)
kinds = st.sampled_from(sorted(KIND_PREFIX))
tenants = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
times = st.integers(min_value=1_600_000_000_000, max_value=2_000_000_000_000)


def test_format_and_128_bits(keyring, t0):
    p = Pseudonymizer(keyring, tenant="acme").imei("356307042441013", t0)
    m = PSEUDONYM_RE.match(p)
    assert m and m.group(1) == "dev" and m.group(2) == "2026m11"
    assert len(m.group(3)) * 5 >= 128


@SETTINGS
@given(tenant=tenants, kind=kinds, ident=ids, ts=times)
def test_deterministic_across_instances(tenant, kind, ident, ts):
    a = Pseudonymizer(_KR, tenant=tenant).at(kind, ident, ts)
    b = Pseudonymizer(_KR, tenant=tenant).at(kind, ident, ts)
    assert a == b and PSEUDONYM_RE.match(a)
    assert a.startswith(KIND_PREFIX[kind] + "_" + epoch_id(ts) + "_")


@SETTINGS
@given(t1=tenants, t2=tenants, kind=kinds, ident=ids, ts=times)
def test_tenants_never_share(t1, t2, kind, ident, ts):
    if t1 == t2:
        return
    assert Pseudonymizer(_KR, tenant=t1).at(kind, ident, ts) != Pseudonymizer(_KR, tenant=t2).at(kind, ident, ts)


@SETTINGS
@given(tenant=tenants, kind=kinds, ident=ids, ts=times)
def test_routes_never_share(tenant, kind, ident, ts):
    proc = Pseudonymizer(_KR, tenant=tenant, route="processor").at(kind, ident, ts)
    ctrl = Pseudonymizer(_KR, tenant=tenant, route="controller").at(kind, ident, ts)
    assert proc.split("_")[2] != ctrl.split("_")[2]


@SETTINGS
@given(tenant=tenants, ident=ids, ts=times, k=st.lists(kinds, min_size=2, max_size=2, unique=True))
def test_kinds_never_share(tenant, ident, ts, k):
    p = Pseudonymizer(_KR, tenant=tenant)
    assert p.at(k[0], ident, ts).split("_")[2] != p.at(k[1], ident, ts).split("_")[2]


@SETTINGS
@given(tenant=tenants, kind=kinds, ident=ids, ts=times, rotation=st.sampled_from(["daily", "weekly", "monthly", "yearly"]))
def test_epochs_never_share(tenant, kind, ident, ts, rotation):
    p = Pseudonymizer(_KR, tenant=tenant, rotation=rotation)
    later = ts + {"daily": 1, "weekly": 7, "monthly": 32, "yearly": 366}[rotation] * 86_400_000
    a, b = p.at(kind, ident, ts), p.at(kind, ident, later)
    assert a.split("_")[1] != b.split("_")[1]
    assert a.split("_")[2] != b.split("_")[2]


def test_zero_ibutton_stays_zero_and_vectorised_matches_scalar(keyring, t0):
    p = Pseudonymizer(keyring, tenant="acme")
    vals = np.array([0, 0x0102030405060708, 0, 0x0102030405060708, 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    out = p.u64("driver", vals, np.full(5, t0))
    assert out[0] == 0 and out[2] == 0
    assert out[1] == out[3] == p.at("driver", bytes.fromhex("0102030405060708"), t0)
    assert out[4] == p.at("driver", b"\xff" * 8, t0)


def test_canonical_forms():
    fmb = {g.name: g for g in identifier_groups("FMB")}
    x64 = {g.name: g for g in identifier_groups("64x")}
    # iButton: its 8 bytes big-endian, from an int or from bytes
    ib = fmb["iButton ID"]
    assert canonical_group(ib, (0x00000123456789AB,)) == bytes.fromhex("00000123456789ab")
    assert canonical_group(ib, (bytes.fromhex("00000123456789ab"),)) == bytes.fromhex("00000123456789ab")
    assert canonical_group(ib, (0,)) is None
    # a tachograph card number across two ASCII halves: FMB (147/148) == 64x (195/196)
    hi, lo = int.from_bytes(b"DRV12345", "big"), int.from_bytes(b"67890\0\0\0", "big")
    c1 = canonical_group(fmb["Driver 1 card ID"], (hi, lo), "FMB")
    c2 = canonical_group(x64["Driver 1 card ID"], (hi, lo), "64x")
    assert c1 == c2 == b"DRV1234567890"
    assert canonical_group(fmb["Driver 1 card ID"], (b"drv12345", b"67890   "), "FMB") == b"DRV1234567890"
    # ICCID: str(part 1) + str(part 2) zero-padded to 10 digits
    assert canonical_iccid(8937020, 1234567) == b"89370200001234567"
    assert canonical_iccid(0, 0) is None
    assert canonical_imei(356307042441013) == b"356307042441013"
    # NX as hex text (the decode JSON contract) or bytes: same canonical
    vin = fmb["VIN"]
    assert canonical_group(vin, ("57564f5a5a5a", )) == canonical_group(vin, (b"WVOZZZ",))


def test_one_driver_one_pseudonym_across_families(keyring, t0):
    from fleetcloak.anonymize.transform import Columns, _identifiers

    p = Pseudonymizer(keyring, tenant="acme")
    hi, lo = int.from_bytes(b"DRV12345", "big"), int.from_bytes(b"67890\0\0\0", "big")
    fmb = Columns(imei=np.array(["356307042441013"]), timestamp_ms=np.array([t0]), lat=np.zeros(1), lon=np.zeros(1),
                  io={147: np.array([hi], np.uint64), 148: np.array([lo], np.uint64)}, family="FMB")
    x64 = Columns(imei=np.array(["356307042441013"]), timestamp_ms=np.array([t0]), lat=np.zeros(1), lon=np.zeros(1),
                  io={195: np.array([hi], np.uint64), 196: np.array([lo], np.uint64)}, family="64x")
    d1 = _identifiers(fmb, p, frozenset({"driver"}), "raise", True).driver[0]
    d2 = _identifiers(x64, p, frozenset({"driver"}), "raise", True).driver[0]
    assert d1 == d2 == p.at("driver", b"DRV1234567890", t0)


def test_cache_computes_each_pseudonym_once_per_epoch(keyring, t0):
    rng = np.random.default_rng(7)
    devices = np.array([356307000000000 + i * 10 for i in range(10_000)], dtype=np.int64)
    p = Pseudonymizer(keyring, tenant="acme")
    for b in range(100):  # 1,000,000 records in batches of 10,000
        idx = rng.integers(0, devices.size, 10_000)
        out = p.imeis(devices[idx], np.full(10_000, t0 + b * 1000))
        assert out[0].startswith("dev_2026m11_")
    assert p.computed == np.unique(devices).size <= 10_000
    # a new epoch computes afresh, once
    p.imeis(devices, np.full(devices.size, t0 + 40 * 86_400_000))
    assert p.computed == 2 * devices.size


def test_cache_is_bounded(keyring, t0):
    p = Pseudonymizer(keyring, tenant="acme", max_entries=100, max_epochs=2)
    for i in range(1000):
        p.at("driver", i.to_bytes(8, "big"), t0)
    assert sum(len(c) for c in p._cache.values()) <= 100
    for m in range(5):
        p.at("driver", b"x", t0 + m * 32 * 86_400_000)
    assert len(p._cache) <= 2


def test_no_collisions_among_a_million_random_imeis(keyring, t0):
    rng = np.random.default_rng(2026)
    bodies = np.unique(rng.integers(10**13, 10**14, 1_050_000, dtype=np.int64))[:1_000_000]
    rng.shuffle(bodies)
    # the Luhn digit, vectorised
    digits = np.stack([(bodies // 10**k) % 10 for k in range(14)], axis=1)  # k=0 is the rightmost
    doubled = digits[:, 0::2] * 2
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    total = doubled.sum(axis=1) + digits[:, 1::2].sum(axis=1)
    imeis = bodies * 10 + (10 - total % 10) % 10
    assert np.unique(imeis).size == 1_000_000
    out = Pseudonymizer(keyring, tenant="acme").imeis(imeis, np.full(imeis.size, t0))
    assert len(set(out.tolist())) == 1_000_000
    # spot-check the vectorised Luhn digits against the policy validator
    from fleetcloak.anonymize.policy import validate_imei
    for v in imeis[:50].tolist():
        validate_imei(str(v))


def test_imeis_accept_strings_and_ints_alike(keyring, t0):
    p = Pseudonymizer(keyring, tenant="acme")
    a = p.imeis(np.array(["356307042441013", "352093085130093"]), np.array([t0, t0]))
    b = p.imeis(np.array([356307042441013, 352093085130093]), np.array([t0, t0]))
    assert a.tolist() == b.tolist()


def test_unknown_kind_is_rejected(keyring, t0):
    with pytest.raises(ValueError):
        Pseudonymizer(keyring, tenant="acme").at("passport", b"x", t0)

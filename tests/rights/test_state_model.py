"""Rights state model and the worker's gate: pure, no broker."""
import json

import numpy as np
import pytest

from fleetcloak.streams.rights import (
    DAY_MS, RightsError, SubjectGate, SubjectKeyUnavailable, SubjectState, apply_request, expired_keys, keyer_for,
    routes_of, subject_key, table_key,
)

T0 = 1_763_000_000_000


def make_keyer(tenants=("acme", "beta")):
    from fleetcloak.anonymize.keys import Keyring
    from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore

    keyring = Keyring(MemoryKeyStore(), MasterKey.generate())
    for t in tenants:
        keyring.ensure_epochs(t, "never")
    return keyer_for(keyring), keyring
IMEI = "356307042441013"
OTHER = "490154203237518"


def step(entry, action, **kw):
    return apply_request(entry, action, tenant="acme", kind="device", subject="subj_x", now_ms=T0, **kw)


def test_erase_blocks_both_routes_and_cannot_be_lifted():
    e = step(None, "erase")
    r = routes_of(e, T0)
    assert (r.processor, r.controller) == (False, False)
    assert e["erased_ms"] == T0 and e["expires_ms"] == T0 + 365 * DAY_MS
    with pytest.raises(RightsError):
        step(e, "lift")


def test_object_removes_the_controller_route_only():
    r = routes_of(step(None, "object"), T0)
    assert (r.processor, r.controller) == (True, False)


def test_restrict_blocks_both_and_lift_resumes_with_a_tombstone():
    e = step(None, "restrict")
    assert routes_of(e, T0) == routes_of(step(None, "erase"), T0)
    assert step(e, "lift") is None  # tombstone: nothing left to remember
    both = step(step(None, "restrict"), "object")
    partly = step(both, "lift", lift=["restriction"])
    assert (routes_of(partly).processor, routes_of(partly).controller) == (True, False)


def test_erased_entry_expires_after_the_window_unless_forever():
    e = step(None, "erase", window_days=30)
    assert not routes_of(e, T0 + 29 * DAY_MS).processor
    assert routes_of(e, T0 + 30 * DAY_MS).processor
    table = {b"a": json.dumps(e).encode(), b"b": json.dumps(step(None, "erase", forever=True)).encode()}
    assert expired_keys(table, T0 + 31 * DAY_MS) == [b"a"]
    with pytest.raises(RightsError):
        step(None, "erase", window_days=400)


def test_subject_keys_are_keyed_stable_and_tenant_separated():
    k1 = subject_key(b"s" * 32, "device", IMEI.encode())
    assert k1 == subject_key(b"s" * 32, "device", IMEI.encode()) and IMEI not in k1
    assert k1 != subject_key(b"t" * 32, "device", IMEI.encode())
    assert k1 != subject_key(b"s" * 32, "driver", IMEI.encode())
    keyer, keyring = make_keyer()
    assert keyer.key("acme", "device", IMEI) != keyer.key("beta", "device", IMEI)
    assert keyer.key("acme", "driver", "00112233AABBCCDD") == keyer.key("acme", "driver", bytes.fromhex("00112233aabbccdd"))
    # an iButton given short gets the raw8 canonical form the worker uses
    assert keyer.key("acme", "driver", "aa01") == keyer.key("acme", "driver", 0xAA01)
    # the same key anonymize's Keyring files the subject's salt under
    assert keyer.key("acme", "device", IMEI) == keyring.subject_key("acme", "device", IMEI.encode())
    with pytest.raises(RightsError):
        keyer.key("acme", "driver", "0000")  # no key present is nobody
    with pytest.raises(SubjectKeyUnavailable):  # never minted by a lookup
        keyer.key("gamma", "device", IMEI)


def _state(keyer, entries):
    table = {}
    for tenant, kind, raw, action in entries:
        skey = keyer.key(tenant, kind, raw)
        e = apply_request(None, action, tenant=tenant, kind=kind, subject=skey, now_ms=T0)
        table[table_key(tenant, kind, skey)] = json.dumps(e).encode()
    return SubjectState.from_table(table)


def test_gate_masks_for_a_batch():
    keyer, _ = make_keyer()
    state = _state(keyer, [("acme", "device", IMEI, "erase"), ("acme", "driver", "aa01", "object")])
    gate = SubjectGate(state, keyer, clock=lambda: T0 + 1)
    proc, ctrl = gate.masks("acme", [IMEI, OTHER, OTHER, OTHER], [None, None, "aa01", "bb02"])
    assert proc.tolist() == [False, True, True, True]
    assert ctrl.tolist() == [False, True, False, True]
    # another tenant is untouched, and no hashing happens for it
    p, c = gate.masks("beta", [IMEI], [None])
    assert p.all() and c.all()
    # single lookup API
    assert state.status("acme", "device", keyer.key("acme", "device", IMEI), T0).processor is False


def test_tombstone_and_offboard_marker_apply_live():
    keyer, _ = make_keyer()
    state = _state(keyer, [("acme", "device", IMEI, "restrict")])
    skey = keyer.key("acme", "device", IMEI)
    assert not state.status("acme", "device", skey).processor
    state.apply(None, table_key("acme", "device", skey), None)
    assert state.status("acme", "device", skey).processor and len(state) == 0
    state.apply(None, b"acme/tenant/*", b'{"offboarded": true}')
    p, c = state.masks("acme", "device", [skey, None])
    assert not p.any() and not c.any()


def test_gate_from_a_control_snapshot_reuses_the_keyer_cache():
    from fleetcloak.streams.rights import gate_from_snapshot

    keyer, keyring = make_keyer()
    skey = keyer.key("acme", "device", IMEI)
    e = apply_request(None, "object", tenant="acme", kind="device", subject=skey, now_ms=T0)
    snapshot = {table_key("acme", "device", skey): json.dumps(e).encode()}
    gate = gate_from_snapshot(snapshot, keyring)
    p, c = gate.masks("acme", [IMEI, OTHER])
    assert p.tolist() == [True, True] and c.tolist() == [False, True]
    again = gate_from_snapshot({}, keyring, keyer=gate.keyer)
    assert again.keyer is gate.keyer and again.masks("acme", [IMEI])[1].all()


def test_sweep_deletes_a_salt_resurrected_beside_an_erasure_marker():
    from fleetcloak.anonymize.keys import SubjectErased
    from fleetcloak.streams.rights import Keys, sweep_resurrected_salts

    keyer, keyring = make_keyer()
    keyring.create = True
    canon = IMEI.encode()
    keyring.subject_salt("acme", "device", canon)
    skey = keyring.erase_subject("acme", "device", canon)
    keyring.store.put(f"subject/acme/{skey}", keyring.master.wrap(f"subject/acme/{skey}", __import__(
        "fleetcloak.anonymize.secret", fromlist=["Secret"]).Secret(b"x" * 32)))  # a late worker's mint
    assert sweep_resurrected_salts(Keys(keyring, keyring.store)) == [("acme", skey)]
    with pytest.raises(SubjectErased):
        keyring.subject_salt_by_key("acme", skey)
    assert sweep_resurrected_salts(Keys(keyring, keyring.store)) == []

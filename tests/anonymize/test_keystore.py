"""Key wrapping, the file keystore, epochs, crypto-shredding and subject erasure."""
from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest

from fleetcloak.anonymize.epochs import epoch_expired, epoch_id, epoch_ids, parse_epoch
from fleetcloak.anonymize.keys import EpochDestroyed, EpochMissing, Keyring, SubjectErased
from fleetcloak.anonymize.keystore import (
    FileKeyStore,
    KeyStore,
    KeyUnwrapError,
    MasterKey,
    MasterKeyMissing,
    MemoryKeyStore,
    load_master_key,
)
from fleetcloak.anonymize.pseudonyms import Pseudonymizer

IMEI = b"356307042441013"
DAY = 86_400_000


def test_both_stores_satisfy_the_interface(tmp_path):
    for store in (MemoryKeyStore(), FileKeyStore(tmp_path / "k.json")):
        assert isinstance(store, KeyStore)
        assert store.get("a/b") is None
        store.put("a/b", b"\x00\x01")
        store.put("a/c", b"x")
        assert store.get("a/b") == b"\x00\x01"
        assert store.names("a/") == ["a/b", "a/c"]
        store.delete("a/b")
        store.delete("a/b")  # idempotent
        assert store.names() == ["a/c"]


def test_file_keystore_persists_atomically_with_private_mode(tmp_path, master, t0):
    path = tmp_path / "keys.json"
    k1 = Keyring(FileKeyStore(path), master)
    p1 = Pseudonymizer(k1, tenant="acme").imei("356307042441013", t0)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keys-")]  # no temp left
    # another process (a new keyring over the same file) sees the same key
    k2 = Keyring(FileKeyStore(path), master, create=False)
    assert Pseudonymizer(k2, tenant="acme").imei("356307042441013", t0) == p1
    doc = json.loads(path.read_text())
    assert set(doc["entries"]) == {"root/acme/2026m11"}


def test_tampered_wrapped_key_fails(master):
    store = MemoryKeyStore()
    kr = Keyring(store, master)
    kr.root("acme", "2026m11")
    doc = json.loads(store.get("root/acme/2026m11"))
    ct = bytearray(base64.b64decode(doc["ct"]))
    ct[3] ^= 1
    doc["ct"] = base64.b64encode(bytes(ct)).decode()
    store.put("root/acme/2026m11", json.dumps(doc).encode())
    with pytest.raises(KeyUnwrapError, match="failed authentication"):
        Keyring(store, master).root("acme", "2026m11")


@pytest.mark.parametrize("target", ["root/other/2026m11", "root/acme/2026m12", "root/service/2026m11"])
def test_wrapped_key_moved_to_another_tenant_or_epoch_fails(master, target):
    store = MemoryKeyStore()
    Keyring(store, master).root("acme", "2026m11")
    store.put(target, store.get("root/acme/2026m11"))
    scope, epoch = target.split("/")[1:]
    with pytest.raises(KeyUnwrapError, match="moved here from another tenant, epoch or subject"):
        Keyring(store, master).root(scope, epoch)


def test_wrong_master_key_is_reported_as_such(master):
    store = MemoryKeyStore()
    Keyring(store, master).root("acme", "2026m11")
    with pytest.raises(KeyUnwrapError, match="another master key"):
        Keyring(store, MasterKey.generate()).root("acme", "2026m11")


def test_production_refuses_without_master_key_and_demo_warns(tmp_path, caplog):
    with pytest.raises(MasterKeyMissing, match="production mode refuses"):
        load_master_key("production", environ={})
    with pytest.warns(UserWarning, match="ephemeral"):
        key = load_master_key("demo", environ={})
    assert key.ephemeral
    assert any("ephemeral" in r.getMessage() for r in caplog.records)
    text = MasterKey.new_base64()
    assert load_master_key("production", environ={"FLEETCLOAK_MASTER_KEY": text}).kid == MasterKey.from_base64(text).kid
    f = tmp_path / "mk"
    f.write_text(text + "\n")
    assert load_master_key(key_file=f, environ={}).kid == MasterKey.from_base64(text).kid
    with pytest.raises(MasterKeyMissing, match="32"):
        load_master_key(environ={"FLEETCLOAK_MASTER_KEY": base64.b64encode(b"short").decode()})
    with pytest.raises(MasterKeyMissing, match="base64"):
        load_master_key(environ={"FLEETCLOAK_MASTER_KEY": "not base64!"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_master_key("production", environ={"FLEETCLOAK_MASTER_KEY": text})  # no warning


def test_destroyed_epoch_cannot_be_recomputed(keyring, t0):
    p = Pseudonymizer(keyring, tenant="acme")
    before = p.imei("356307042441013", t0)
    assert keyring.destroy_epoch("acme", "2026m11")
    for kr in (keyring, Keyring(keyring.store, keyring.master)):  # this process and a fresh one
        with pytest.raises(EpochDestroyed, match="crypto-shredded"):
            Pseudonymizer(kr, tenant="acme").imei("356307042441013", t0)
    with pytest.raises(EpochDestroyed):
        p.imeis(np.array(["356307042441013"]), np.array([t0]))
    # other epochs and tenants are untouched
    assert Pseudonymizer(keyring, tenant="acme").imei("356307042441013", t0 + 32 * DAY) != before
    assert Pseudonymizer(keyring, tenant="other").imei("356307042441013", t0).startswith("dev_2026m11_")
    states = {(e.scope, e.epoch): e.state for e in keyring.epochs()}
    assert states[("acme", "2026m11")] == "destroyed"
    assert states[("acme", "2026m12")] == "active"


def test_destroy_expired_after_retention(keyring, t0):
    for m in range(14):
        keyring.root("acme", epoch_id(t0 - m * 31 * DAY))
    keyring.root("acme", "static")
    now = t0
    destroyed = keyring.destroy_expired(now, 365)
    assert destroyed and all(epoch_expired(ep, now, 365) for _, ep in destroyed)
    left = [e.epoch for e in keyring.epochs("acme") if e.state == "active"]
    assert "static" in left
    assert all(not epoch_expired(ep, now, 365) for ep in left)
    # an epoch whose end is still inside the window stays: its records are still held
    assert not epoch_expired(epoch_id(now - 364 * DAY), now, 365)


def test_missing_epoch_is_not_minted_without_create(master, t0):
    kr = Keyring(MemoryKeyStore(), master, create=False)
    with pytest.raises(EpochMissing):
        Pseudonymizer(kr, tenant="acme").imei("356307042441013", t0)
    assert kr.store.names() == []


def test_ensure_epochs_creates_current_and_next(keyring, t0):
    assert keyring.ensure_epochs("acme", "monthly", t0) == ["2026m11", "2026m12"]
    assert keyring.has_epoch("acme", "2026m12")


def test_epoch_labels_round_trip():
    t = 1_795_000_000_000
    for rot, label in [("daily", "2026m11d18"), ("weekly", "2026w47"), ("monthly", "2026m11"), ("yearly", "y2026"), ("never", "static")]:
        assert epoch_id(t, rot) == label
        r, start, end = parse_epoch(label)
        assert r == rot
        if end is not None:
            assert start <= t < end
    labels, inv = epoch_ids(np.array([t, t + 40 * DAY, t]), "monthly")
    assert [labels[i] for i in inv] == ["2026m11", "2026m12", "2026m11"]


def test_erasing_a_subject_unlinks_only_them(keyring, t0):
    ctrl = Pseudonymizer(keyring, tenant="acme", route="controller")
    proc = Pseudonymizer(keyring, tenant="acme")
    other = b"352093085130093"
    before_other = ctrl.at("device", other, t0)
    ctrl.at("device", IMEI, t0)
    skey = keyring.erase_subject("acme", "device", IMEI)
    assert skey.startswith("subj_")
    # neither the old epoch's nor a new epoch's analytics pseudonym can be computed
    for kr in (keyring, Keyring(keyring.store, keyring.master)):
        c = Pseudonymizer(kr, tenant="acme", route="controller")
        with pytest.raises(SubjectErased):
            c.at("device", IMEI, t0)
        with pytest.raises(SubjectErased):
            c.at("device", IMEI, t0 + 40 * DAY)
        assert c.at("device", other, t0) == before_other
    out = ctrl.imeis(np.array([IMEI.decode(), other.decode()]), np.array([t0, t0]), on_erased="none")
    assert out[0] is None and out[1] == before_other
    # the tenant's own (processor) pseudonym is the tenant's business and unaffected
    assert proc.at("device", IMEI, t0).startswith("dev_")
    assert keyring.is_erased("acme", skey)
    assert not keyring.store.names(f"subject/acme/{skey}")


def test_subject_key_matches_the_rights_module_formula(keyring):
    import hashlib
    import hmac

    from fleetcloak.anonymize.keys import b32

    secret = keyring.subjects_secret("acme").reveal()
    expected = "subj_" + b32(hmac.new(secret, b"device\0" + IMEI, hashlib.sha256).digest())
    assert keyring.subject_key("acme", "device", IMEI) == expected
    assert keyring.subject_key("other", "device", IMEI) != expected


def test_offboarding_destroys_every_epoch_of_a_tenant(keyring, t0):
    Pseudonymizer(keyring, tenant="acme").imei("356307042441013", t0)
    keyring.subjects_secret("acme")
    keyring.root("acme", "2026m10")
    gone = keyring.destroy_scope("acme")
    assert set(gone) == {"2026m10", "2026m11", "static"}
    with pytest.raises(EpochDestroyed):
        keyring.subjects_secret("acme")


def test_worker_keyring_over_the_keys_table(master, t0, policies):
    """The worker's Keyring reads the topic's table; what it mints is queued for the
    topic; tombstones read back from the topic make it drop what it cached."""
    from fleetcloak.anonymize.keystore import TableKeyStore

    source = MemoryKeyStore()
    Keyring(source, master).prepare(policies, t0)
    table = {n.encode(): source.get(n) for n in source.names()}
    store = TableKeyStore(table)
    kr = Keyring(store, master, create=False)
    p = Pseudonymizer(kr, tenant="acme-logistics").imei("356307042441013", t0)
    assert p == Pseudonymizer(Keyring(source, master), tenant="acme-logistics").imei("356307042441013", t0)
    assert store.drain() == []  # roots were prepared: reading mints nothing
    c = Pseudonymizer(kr, tenant="acme-logistics", route="controller").imei("356307042441013", t0)
    minted = store.drain()
    assert c.startswith("dev_2026m11_") and len(minted) == 1
    assert minted[0][0].startswith(b"subject/acme-logistics/subj_") and b"ct" in minted[0][1]
    # our salt read back from the topic: nothing changes
    table.update(dict(minted))
    assert store.sync(table) is False
    # another writer's salt for the same subject won the compaction: adopt it
    skey = kr.subject_key("acme-logistics", "device", b"356307042441013")
    other = master.wrap(f"subject/acme-logistics/{skey}", kr.root("acme-logistics", "static"))
    table[f"subject/acme-logistics/{skey}".encode()] = other
    assert store.sync(table) is True
    kr.invalidate()
    c2 = Pseudonymizer(kr, tenant="acme-logistics", route="controller").imei("356307042441013", t0)
    assert c2 != c
    # an erasure arrives as a tombstone + marker: the cached salt must go
    del table[f"subject/acme-logistics/{skey}".encode()]
    table[f"erased/acme-logistics/{skey}".encode()] = b"{}"
    assert store.sync(table) is True
    kr.invalidate()
    with pytest.raises(SubjectErased):
        Pseudonymizer(kr, tenant="acme-logistics", route="controller").imei("356307042441013", t0)


def test_a_salt_recreated_after_erasure_is_never_used():
    """A worker racing an erasure may write the subject's salt again; the erased marker wins."""
    from fleetcloak.anonymize.keys import Keyring, SubjectErased
    from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore

    store, master = MemoryKeyStore(), MasterKey.generate()
    ring = Keyring(store, master)
    canon = bytes.fromhex("0102030405060708")
    ring.subject_salt("acme", "driver", canon)
    skey = ring.erase_subject("acme", "driver", canon)
    store.put(f"subject/acme/{skey}", master.wrap(f"subject/acme/{skey}", ring.root("acme", "static")))
    fresh = Keyring(store, master)
    with pytest.raises(SubjectErased):
        fresh.subject_salt_by_key("acme", skey)
    assert fresh.subject_salts("acme", "driver", [canon]) == [None]


@pytest.mark.parametrize("span_days", [1, 3, 40, 5000])
def test_epoch_ids_match_epoch_id_per_timestamp(span_days):
    """Short spans index days by offset, long ones sort: the same answer either way."""
    rng = np.random.default_rng(span_days)
    ts = rng.integers(1_700_000_000_000, 1_700_000_000_000 + span_days * DAY, 3000)
    for rotation in ("daily", "weekly", "monthly"):
        labels, inv = epoch_ids(ts, rotation)
        assert labels == sorted(set(labels))
        assert [labels[i] for i in inv] == [epoch_id(int(t), rotation) for t in ts]

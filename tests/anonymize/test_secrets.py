"""No secret in any repr, str, format, log line or exception message."""
from __future__ import annotations

import base64
import logging
import pickle

import numpy as np
import pytest

from fleetcloak.anonymize.keys import EpochDestroyed, HmacSha256, Keyring
from fleetcloak.anonymize.keystore import KeyUnwrapError, MasterKey, MemoryKeyStore
from fleetcloak.anonymize.pseudonyms import Pseudonymizer
from fleetcloak.anonymize.secret import Secret


def _forms(raw: bytes) -> list[str]:
    return [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(), repr(raw)[2:-1], base64.b32encode(raw).decode()[:20]]


def test_secret_hides_itself():
    raw = bytes(range(32))
    s = Secret(raw, "root acme/2026m11")
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", "%s" % s, repr([s]), repr({"k": s})]
    for text in shown:
        for form in _forms(raw):
            assert form not in text
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        bytes(s)
    assert s == Secret(raw) and s != Secret(bytes(32))
    assert s.reveal() == raw


def test_nothing_secret_reaches_logs_reprs_or_exceptions(caplog, t0):
    caplog.set_level(logging.DEBUG)
    master = MasterKey.generate()
    store = MemoryKeyStore()
    kr = Keyring(store, master)
    texts = [repr(master), str(master), repr(kr), repr(store)]
    p = Pseudonymizer(kr, tenant="acme")
    c = Pseudonymizer(kr, tenant="acme", route="controller")
    p.imei("356307042441013", t0)
    c.imei("356307042441013", t0)
    texts += [repr(p), repr(c), repr(kr.mac("acme", "processor", "device", "2026m11"))]
    with pytest.raises(TypeError):
        pickle.dumps(HmacSha256(b"k" * 32))
    # errors: tampered key, destroyed epoch, erased subject
    wrapped = store.get("root/acme/2026m11")
    store.put("root/acme/2026m12", wrapped)
    try:
        Keyring(store, master).root("acme", "2026m12")
    except KeyUnwrapError as exc:
        texts += [str(exc), repr(exc)]
    store.delete("root/acme/2026m12")
    kr.destroy_epoch("acme", "2026m11")
    with pytest.raises(EpochDestroyed) as ei:
        Pseudonymizer(kr, tenant="acme").imei("356307042441013", t0)
    texts += [str(ei.value), repr(ei.value)]
    kr.erase_subject("acme", "device", b"356307042441013")
    try:
        c2 = Pseudonymizer(Keyring(store, master), tenant="acme", route="controller")
        c2.imeis(np.array(["356307042441013"]), np.array([t0]))
    except Exception as exc:
        texts += [str(exc), repr(exc)]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("destroyed key epoch" in r.getMessage() for r in caplog.records)
    secrets_raw = [master.reveal()]
    for name in store.names("root/") + store.names("subject/"):
        secrets_raw.append(master.unwrap(name, store.get(name)).reveal())
    for key in list(kr._derived.values()):
        secrets_raw.append(key.reveal())
    joined = "\n".join(texts)
    for raw in secrets_raw:
        for form in _forms(raw):
            assert form not in joined
    # the raw IMEI is not logged either
    assert "356307042441013" not in "\n".join(r.getMessage() for r in caplog.records)

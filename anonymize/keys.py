"""The key hierarchy: root secrets per (scope, epoch), derived keys, per-subject salts.

    master key (env / key file; never in Kafka)
      └─ wraps ─▶ root secret  R[scope, epoch]   32 random bytes (secrets.token_bytes)
                    scope = tenant id (processor route) or "service" (controller route)
                    └─ HKDF-SHA256 ─▶ K[scope, route, purpose, epoch]
                         info = "fleetcloak/v1|<scope>|<route>|<purpose>|<epoch>"
                         purpose = an identifier kind ("device", "driver", ...) or
                                   "record_id"
      └─ wraps ─▶ subject salt  S[tenant, subject key]   32 random bytes, one per (tenant, kind,
                    subject) on the controller route;
                    subject key = "subj_" + b32(HMAC(K[tenant, "processor", "subjects",
                    "static"], kind NUL canonical id)) -- non-rotating, the same subject
                    key streams/rights.py uses in the fleetcloak.subjects topic

Processor pseudonym  = HMAC(K[tenant, "processor", kind, epoch], canonical id)
Controller pseudonym = HMAC(K["service", "controller", kind, epoch], S[tenant, subject key] || canonical id)

Crypto-shredding: `destroy_epoch` deletes R[scope, epoch] and leaves a marker, so
nothing derived from it can be computed again (`EpochDestroyed`, never a silent new
key). `erase_subject` deletes S[tenant, subject key] and leaves a marker: that person's controller-route
pseudonyms of every epoch become uncomputable, and nobody else's change.

Caches: roots, derived keys and salts are cached in memory (they are needed for every
batch); `invalidate()` drops the caches when the backing store changed under us (the
worker calls it when a keys-topic tombstone arrives). `generation` increases on every
destroy/erase/invalidate so pseudonym caches know to drop their entries.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _recordid
from .epochs import STATIC, epoch_expired, epoch_id, parse_epoch
from .keystore import KeyStore, KeyStoreError, MasterKey
from .secret import Secret

log = logging.getLogger(__name__)

SERVICE = "service"
ROUTES = ("processor", "controller")
_HKDF_SALT = b"fleetcloak/v1/hkdf"


class EpochDestroyed(KeyStoreError):
    """The epoch's root secret was destroyed: its pseudonyms can no longer be computed."""

    def __init__(self, scope: str, epoch: str):
        self.scope, self.epoch = scope, epoch
        super().__init__(
            f"key epoch {epoch} of {scope!r} was destroyed (crypto-shredded): pseudonyms "
            "and record ids of that period can no longer be computed"
        )


class EpochMissing(KeyStoreError):
    def __init__(self, scope: str, epoch: str):
        self.scope, self.epoch = scope, epoch
        super().__init__(f"no key epoch {epoch} exists for {scope!r} yet")


class SubjectErased(KeyStoreError):
    def __init__(self, skey: str):
        self.skey = skey
        super().__init__(f"subject {skey} was erased: its controller-route pseudonyms can no longer be computed")


@dataclass(frozen=True)
class EpochInfo:
    scope: str
    epoch: str
    state: str  # "active" | "destroyed"
    destroyed_at_ms: int | None = None


def b32(digest: bytes, nbytes: int = 16) -> str:
    """Lowercase unpadded base32 of the first `nbytes` (16 bytes = 128 bits = 26 chars)."""
    return base64.b32encode(digest[:nbytes]).decode("ascii").rstrip("=").lower()


def b32_many(digests: list[bytes]) -> list[str]:
    """`b32` of many digests' first 16 bytes at once, in C (same output as b32)."""
    return _recordid.b32_many(digests)


class HmacSha256:
    """HMAC-SHA256 under one fixed key, with the padded-key states computed once
    (RFC 2104; identical output to hmac.digest, about twice as fast for short ids)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __repr__(self) -> str:
        return "HmacSha256(******)"

    def __reduce__(self):
        raise TypeError("an HMAC key cannot be pickled")

    def many(self, messages) -> list[bytes]:
        icopy, ocopy = self._inner.copy, self._outer.copy
        out = []
        for m in messages:
            i = icopy()
            i.update(m)
            o = ocopy()
            o.update(i.digest())
            out.append(o.digest())
        return out

    def __call__(self, message: bytes) -> bytes:
        return self.many((message,))[0]


def _check_name_part(value: str, what: str) -> str:
    if not value or any(c in value for c in "/|\n") or not value.isascii():
        raise ValueError(f"{what} {value!r} cannot be used in a key name")
    return value


class Keyring:
    """Root secrets, derived keys and subject salts over a `KeyStore`.

    create=True: a missing root secret of a live epoch is created on first use (the
    worker's mode). create=False: a missing one raises `EpochMissing` (the CLI's mode,
    so an operator's lookup never mints keys the worker doesn't have).
    """

    def __init__(self, store: KeyStore, master: MasterKey, *, create: bool = True):
        self.store = store
        self.master = master
        self.create = create
        self.generation = 0
        self._lock = threading.RLock()
        self._roots: dict[tuple[str, str], Secret] = {}
        self._derived: dict[tuple[str, str, str, str], Secret] = {}
        self._macs: dict[tuple[str, str, str, str], HmacSha256] = {}
        self._salts: dict[tuple[str, str], Secret] = {}

    def __repr__(self) -> str:
        return f"Keyring({self.store!r}, {self.master!r})"

    # --- roots ------------------------------------------------------------------
    @staticmethod
    def root_name(scope: str, epoch: str) -> str:
        return f"root/{_check_name_part(scope, 'scope')}/{_check_name_part(epoch, 'epoch')}"

    def root(self, scope: str, epoch: str) -> Secret:
        key = (scope, epoch)
        cached = self._roots.get(key)
        if cached is not None:
            return cached
        with self._lock:
            name = self.root_name(scope, epoch)
            wrapped = self.store.get(name)
            if wrapped is None:
                if self.store.get(f"shredded/{scope}/{epoch}") is not None:
                    raise EpochDestroyed(scope, epoch)
                if not self.create:
                    raise EpochMissing(scope, epoch)
                wrapped = self._create_root(name, scope, epoch)
            secret = self.master.unwrap(name, wrapped, f"root {scope}/{epoch}")
            self._roots[key] = secret
            return secret

    def _create_root(self, name: str, scope: str, epoch: str) -> bytes:
        parse_epoch(epoch)  # refuse to mint keys under a malformed epoch id
        wrapped = self.master.wrap(name, Secret(secrets.token_bytes(32), "root"))
        put_if_absent = getattr(self.store, "put_if_absent", None)
        if put_if_absent is not None:
            wrapped = put_if_absent(name, wrapped)
        else:
            self.store.put(name, wrapped)
        log.info("created key epoch %s for %s", epoch, scope)
        return wrapped

    def has_epoch(self, scope: str, epoch: str) -> bool:
        return self.store.get(self.root_name(scope, epoch)) is not None

    def derive(self, scope: str, route: str, purpose: str, epoch: str) -> Secret:
        """K[scope, route, purpose, epoch] (HKDF-SHA256 of the epoch's root secret)."""
        key = (scope, route, purpose, epoch)
        cached = self._derived.get(key)
        if cached is not None:
            return cached
        if route not in ROUTES:
            raise ValueError(f"route is one of {ROUTES}, not {route!r}")
        if (scope == SERVICE) != (route == "controller"):
            raise ValueError("the controller route uses the service's keys, the processor route a tenant's")
        root = self.root(scope, epoch)
        info = f"fleetcloak/v1|{scope}|{route}|{purpose}|{epoch}".encode()
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info).derive(root.reveal())
        secret = Secret(raw, f"{scope}/{route}/{purpose}/{epoch}")
        self._derived[key] = secret
        return secret

    def mac(self, scope: str, route: str, purpose: str, epoch: str) -> HmacSha256:
        """HMAC-SHA256 under K[scope, route, purpose, epoch], prepared once and cached."""
        key = (scope, route, purpose, epoch)
        m = self._macs.get(key)
        if m is None:
            m = self._macs[key] = HmacSha256(self.derive(scope, route, purpose, epoch).reveal())
        return m

    # --- epochs -----------------------------------------------------------------
    def ensure_epochs(self, scope: str, rotation: str, now_ms: int | None = None, ahead: int = 1,
                      back_ms: int = 0) -> list[str]:
        """Create the roots of every epoch from the one holding `now - back_ms` to the
        current one, and the next `ahead` ones, where missing (never a shredded one).

        Run from one place (`policy apply`, the retention housekeeping) so that workers
        sharing a keys topic find roots already there instead of racing to create them:
        with `back_ms` = the retention window, a device's backlog finds its epoch too.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        out = []
        ep = epoch_id(now_ms - back_ms, rotation)
        future = 0
        while True:
            if ep != STATIC:
                _, start, end = parse_epoch(ep)
                if start > now_ms:
                    if future >= ahead:
                        break
                    future += 1
            out.append(ep)
            if not self.has_epoch(scope, ep) and self.store.get(f"shredded/{scope}/{ep}") is None:
                saved, self.create = self.create, True
                try:
                    self.root(scope, ep)
                finally:
                    self.create = saved
            if ep == STATIC:
                break
            ep = epoch_id(end, rotation)
        return out

    rotate = ensure_epochs

    def prepare(self, policies, now_ms: int | None = None, *, backlog: bool = True) -> dict[str, list[str]]:
        """Create every key a worker will need for a PolicySet: each tenant's epochs over
        its retention window (backlog=True) up to the next one, its static root (its
        subjects secret), and the service's epochs likewise. Call it from one place
        (`policy apply`, the retention housekeeping), so that workers sharing a keys
        topic never race to create the same root."""
        day = 86_400_000
        done = {}
        for tenant, pol in policies.tenants.items():
            back = pol.retention_days * day if backlog else 0
            done[tenant] = self.ensure_epochs(tenant, pol.pseudonym_rotation, now_ms, back_ms=back)
            done[tenant] += [e for e in self.ensure_epochs(tenant, "never", now_ms) if e not in done[tenant]]
        svc = policies.service
        svc_rotation = svc.pseudonym_rotation if svc is not None else "monthly"
        svc_back = (svc.retention_days if svc is not None else 365) * day if backlog else 0
        done[SERVICE] = self.ensure_epochs(SERVICE, svc_rotation, now_ms, back_ms=svc_back)
        return done

    def epochs(self, scope: str | None = None) -> list[EpochInfo]:
        """Every epoch the store knows of (active or destroyed), sorted by scope, start."""
        out = []
        for prefix, state in (("root/", "active"), ("shredded/", "destroyed")):
            for name in self.store.names(prefix + (f"{scope}/" if scope else "")):
                _, sc, ep = name.split("/", 2)
                at = None
                if state == "destroyed":
                    try:
                        at = json.loads(self.store.get(name) or b"{}").get("destroyed_at_ms")
                    except ValueError:
                        at = None
                out.append(EpochInfo(sc, ep, state, at))
        return sorted(out, key=lambda e: (e.scope, _start(e.epoch), e.state))

    def destroy_epoch(self, scope: str, epoch: str, *, now_ms: int | None = None) -> bool:
        """Crypto-shred one epoch: delete its root secret, remember that it was destroyed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            name = self.root_name(scope, epoch)
            existed = self.store.get(name) is not None
            self.store.put(f"shredded/{scope}/{epoch}", json.dumps({"destroyed_at_ms": now_ms}).encode())
            self.store.delete(name)
            self._forget(scope, epoch)
        log.info("destroyed key epoch %s of %s", epoch, scope)
        return existed

    def destroy_expired(self, now_ms: int, retention_days: int, scope: str | None = None) -> list[tuple[str, str]]:
        """Destroy every active epoch whose end lies more than `retention_days` before now.

        The "static" epoch (rotation never) never expires; it goes with `destroy_scope`.
        """
        done = []
        for info in self.epochs(scope):
            if info.state == "active" and epoch_expired(info.epoch, now_ms, retention_days):
                self.destroy_epoch(info.scope, info.epoch, now_ms=now_ms)
                done.append((info.scope, info.epoch))
        return done

    def destroy_scope(self, scope: str, *, now_ms: int | None = None) -> list[str]:
        """Destroy every epoch of a tenant (offboarding). Returns the epochs destroyed."""
        eps = [e.epoch for e in self.epochs(scope) if e.state == "active"]
        for ep in eps:
            self.destroy_epoch(scope, ep, now_ms=now_ms)
        return eps

    # --- per-subject salts (controller route) -------------------------------------
    def subjects_secret(self, tenant: str) -> Secret:
        """The tenant's non-rotating subjects secret: HKDF of R[tenant, "static"] with
        purpose "subjects". It keys subject indexes (below and in streams/rights.py's
        SubjectKeyer: pass `keyring.subjects_secret` as its `secret_for`). Destroyed with
        the tenant's other keys at offboarding (`destroy_scope`)."""
        return self.derive(tenant, "processor", "subjects", STATIC)

    def subject_key(self, tenant: str, kind: str, canonical: bytes) -> str:
        """The keyed, non-reversible, non-rotating name of a subject, "subj_<26 base32>":
        HMAC(subjects_secret(tenant), kind NUL canonical). The keystore and the rights
        topic index a subject by it; never by the raw identifier. It equals
        streams.rights.subject_key(subjects_secret(tenant), kind, canonical)."""
        key = self.subjects_secret(tenant).reveal()
        mac = hmac.digest(key, kind.encode() + b"\0" + canonical, hashlib.sha256)
        return f"subj_{b32(mac)}"

    def subject_salt(self, tenant: str, kind: str, canonical: bytes) -> Secret:
        return self.subject_salt_by_key(tenant, self.subject_key(tenant, kind, canonical))

    def subject_salt_by_key(self, tenant: str, skey: str) -> Secret:
        """The subject's controller-route salt, created on first use; SubjectErased
        after `erase_subject` (an erased subject never gets a new salt)."""
        cached = self._salts.get((tenant, skey))
        if cached is not None:
            return cached
        with self._lock:
            name = f"subject/{_check_name_part(tenant, 'tenant')}/{_check_name_part(skey, 'subject key')}"
            if self.store.get(f"erased/{tenant}/{skey}") is not None:
                # checked first: a salt re-created by a worker racing the erasure is never used
                raise SubjectErased(skey)
            wrapped = self.store.get(name)
            if wrapped is None:
                wrapped = self.master.wrap(name, Secret(secrets.token_bytes(32), "subject salt"))
                put_if_absent = getattr(self.store, "put_if_absent", None)
                if put_if_absent is not None:
                    wrapped = put_if_absent(name, wrapped)
                else:
                    self.store.put(name, wrapped)
            salt = self.master.unwrap(name, wrapped, "subject salt")
            self._salts[(tenant, skey)] = salt
            return salt

    def subject_salts(self, tenant: str, kind: str, canonicals: list[bytes]) -> list[Secret | None]:
        """`subject_salt` for many subjects at once (None for an erased one): the cached
        ones from memory, the rest with one store read and, for new subjects, one
        store write (`get_many` / `put_many_if_absent` when the store offers them)."""
        out: list[Secret | None] = [None] * len(canonicals)
        todo: dict[str, list[int]] = {}
        for i, canon in enumerate(canonicals):
            skey = self.subject_key(tenant, kind, canon)
            cached = self._salts.get((tenant, skey))
            if cached is not None:
                out[i] = cached
            else:
                todo.setdefault(skey, []).append(i)
        if not todo:
            return out
        get_many = getattr(self.store, "get_many", None)
        put_many = getattr(self.store, "put_many_if_absent", None)
        if get_many is None or put_many is None:
            for skey, idx in todo.items():
                try:
                    salt = self.subject_salt_by_key(tenant, skey)
                except SubjectErased:
                    salt = None
                for i in idx:
                    out[i] = salt
            return out
        with self._lock:
            names = {skey: f"subject/{tenant}/{skey}" for skey in todo}
            found = get_many(list(names.values()) + [f"erased/{tenant}/{k}" for k in todo])
            new = {}
            for skey, name in names.items():
                if name not in found and f"erased/{tenant}/{skey}" not in found:
                    new[name] = self.master.wrap(name, Secret(secrets.token_bytes(32), "subject salt"))
            if new:
                found.update(put_many(new))
            for skey, idx in todo.items():
                wrapped = found.get(names[skey])
                if wrapped is None or f"erased/{tenant}/{skey}" in found:
                    continue  # erased (a salt re-created by a racing worker included): stays None
                salt = self.master.unwrap(names[skey], wrapped, "subject salt")
                self._salts[(tenant, skey)] = salt
                for i in idx:
                    out[i] = salt
        return out

    def is_erased(self, tenant: str, skey: str) -> bool:
        return self.store.get(f"erased/{tenant}/{skey}") is not None

    def erase_subject(self, tenant: str, kind: str, canonical: bytes, *, now_ms: int | None = None) -> str:
        """Destroy one subject's controller-route salt. Returns the subject key."""
        skey = self.subject_key(tenant, kind, canonical)
        self.erase_subject_by_key(tenant, skey, now_ms=now_ms)
        return skey

    def erase_subject_by_key(self, tenant: str, skey: str, *, now_ms: int | None = None) -> None:
        """As erase_subject, from the subject key alone (what the subjects topic holds)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            self.store.put(f"erased/{tenant}/{skey}", json.dumps({"erased_at_ms": now_ms}).encode())
            self.store.delete(f"subject/{tenant}/{skey}")
            self._salts.pop((tenant, skey), None)
            self.generation += 1

    # --- caches -------------------------------------------------------------------
    def _forget(self, scope: str, epoch: str) -> None:
        self._roots.pop((scope, epoch), None)
        for k in [k for k in self._derived if k[0] == scope and k[3] == epoch]:
            del self._derived[k]
        for k in [k for k in self._macs if k[0] == scope and k[3] == epoch]:
            del self._macs[k]
        self.generation += 1

    def invalidate(self) -> None:
        """Drop every cached secret (the backing store changed: e.g. a tombstone)."""
        with self._lock:
            self._roots.clear()
            self._derived.clear()
            self._macs.clear()
            self._salts.clear()
            self.generation += 1


def _start(epoch: str) -> int:
    try:
        return parse_epoch(epoch)[1]
    except ValueError:
        return 0

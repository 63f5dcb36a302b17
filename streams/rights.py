"""Data-subject rights: the request/state model, the subject key, and the worker's gate.

State lives in the compacted `fleetcloak.subjects` topic (one partition, DESIGN.md):

    key   = "<tenant>/<kind>/<subject key>"            (UTF-8)
    value = JSON SubjectEntry (below), or null (tombstone: no restriction left)

The subject key is NOT the raw identifier. It is a keyed hash that does not rotate:
`subj_` + base32(HMAC-SHA256(subjects secret, "<kind>\\0" + canonical id)[:16]) (128
bits), where the subjects secret is anonymize's `Keyring.subjects_secret(tenant)`: HKDF
of the tenant's "static" root, which never rotates and is destroyed with the tenant's
other keys at offboarding. It must not rotate because an erasure made in March has to
keep stopping the same person's records in April, when the pseudonym epoch (and so the
tenant's processor pseudonym) has changed. Per tenant, so the same IMEI gives unrelated
keys in two tenants and the audit trail (which names subjects only by this key) cannot
be joined across tenants; after offboarding nobody can recompute it at all.

Semantics (routes a subject's records may take):

    erase     neither route; the per-subject controller salt is destroyed (Keyring)
    restrict  neither route until lifted
    object    processor route only (GDPR art. 21 concerns our analytics)
    lift      clears restriction and/or objection; an erasure cannot be lifted
    offboard  a tenant marker: nothing of that tenant passes

Expiry: a lifted subject is tombstoned at once. An erased subject's entry is kept as a
suppression entry for the tenant's retention window (`expires_ms`); by then every
record from before the erasure is older than the window and the retention gate drops
it anyway. `--forever` keeps it without expiry (it holds only the keyed hash).
Restrict and object entries stay while they are in effect: they are instructions.

`SubjectState` is the in-memory table every worker keeps; its lookups are pure and
vectorised (`masks`). Nothing in this module's pure part touches Kafka.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

SUBJECTS_TOPIC = "fleetcloak.subjects"
SCHEMA_VERSION = 1
DAY_MS = 86_400_000
MAX_WINDOW_DAYS = 365
ACTIONS = ("erase", "restrict", "object", "lift", "export")
TENANT_MARKER_KIND = "tenant"  # key "<tenant>/tenant/*": the tenant was offboarded


class RightsError(ValueError):
    pass


# --------------------------------------------------------------------------- subject key

def canonical_id(kind: str, raw: str | bytes | int) -> bytes:
    """The canonical bytes of an identifier, as anonymize/canonical.py defines them, so the
    subject key matches what the worker computes from a record: an IMEI is its 15 ASCII
    digits; a driver id given as hex of up to 8 bytes is an iButton/RFID-style raw8
    value (left-padded to 8 bytes); longer hex is taken as raw bytes."""
    from fleetcloak.anonymize.canonical import canonical_imei, canonical_raw8

    if kind == "device":
        try:
            return canonical_imei(raw)
        except (ValueError, UnicodeDecodeError):
            raise RightsError("an IMEI is 15 digits") from None
    if isinstance(raw, int):
        b = canonical_raw8(raw)
    else:
        if isinstance(raw, (bytes, bytearray)):
            b = bytes(raw)
        else:
            try:
                b = bytes.fromhex(str(raw).strip().lower().removeprefix("0x"))
            except ValueError:
                raise RightsError(f"a {kind} id is given as hex bytes") from None
        b = canonical_raw8(b) if len(b) <= 8 else b
    if not b:
        raise RightsError(f"a zero or empty {kind} id names nobody")
    return b


def subject_key(secret: bytes, kind: str, canonical: bytes) -> str:
    mac = hmac.new(secret, kind.encode() + b"\0" + canonical, hashlib.sha256).digest()
    return "subj_" + base64.b32encode(mac[:16]).decode().rstrip("=").lower()


class SubjectKeyer:
    """Subject keys for raw ids, cached per (tenant, kind, id).

    `secret_for(tenant) -> bytes | Secret` supplies the tenant's non-rotating subjects
    secret. The cache keeps a bounded number of keys (an LRU of `cache_size`).
    """

    def __init__(self, secret_for: Callable[[str], object], cache_size: int = 200_000) -> None:
        self._secret_for = secret_for
        self._secrets: dict[str, bytes] = {}
        self._key = lru_cache(maxsize=cache_size)(self._compute)

    def _secret(self, tenant: str) -> bytes:
        s = self._secrets.get(tenant)
        if s is None:
            v = self._secret_for(tenant)
            s = v.reveal() if hasattr(v, "reveal") else bytes(v)
            self._secrets[tenant] = s
        return s

    def _compute(self, tenant: str, kind: str, canonical: bytes) -> str:
        return subject_key(self._secret(tenant), kind, canonical)

    def key(self, tenant: str, kind: str, raw: str | bytes) -> str:
        return self._key(tenant, kind, canonical_id(kind, raw))

    def keys(self, tenant: str, kind: str, raws: Sequence[str | bytes | None]) -> list[str | None]:
        return [None if r is None else self.key(tenant, kind, r) for r in raws]

    def forget(self, tenant: str) -> None:
        """Drop a tenant's secret and every cached key (offboarding)."""
        self._secrets.pop(tenant, None)
        self._key.cache_clear()

    def __repr__(self) -> str:
        return f"SubjectKeyer({len(self._secrets)} tenants, ******)"


class SubjectKeyUnavailable(RuntimeError):
    """The tenant's subjects secret is not (yet) visible: fail closed, never guess."""


def subjects_secret_source(keyring) -> Callable[[str], object]:
    """`secret_for` backed by anonymize's Keyring, WITHOUT minting a root: a worker that
    has not yet seen the tenant's static root (created by the rights CLI or `policy
    apply`) must not create a different one, or its subject keys would not match the
    rights topic's. Raises SubjectKeyUnavailable instead (the worker should stop the
    batch uncommitted and retry: fail closed)."""
    from fleetcloak.anonymize.epochs import STATIC

    def secret_for(tenant: str):
        if not keyring.has_epoch(tenant, STATIC):
            raise SubjectKeyUnavailable(f"no subjects secret for tenant {tenant!r} in the keystore yet")
        return keyring.subjects_secret(tenant)

    return secret_for


def keyer_for(keyring) -> "SubjectKeyer":
    """The SubjectKeyer a worker or CLI builds from its Keyring."""
    return SubjectKeyer(subjects_secret_source(keyring))


# --------------------------------------------------------------------------- state model

def table_key(tenant: str, kind: str, skey: str) -> bytes:
    return f"{tenant}/{kind}/{skey}".encode()


def parse_table_key(key: bytes) -> tuple[str, str, str]:
    tenant, kind, skey = key.decode().split("/", 2)
    return tenant, kind, skey


@dataclass(frozen=True)
class Routes:
    processor: bool
    controller: bool


ALL_ROUTES = Routes(True, True)
NO_ROUTES = Routes(False, False)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def apply_request(current: dict | None, action: str, *, tenant: str, kind: str, subject: str,
                  now_ms: int, window_days: int = MAX_WINDOW_DAYS, request_id: str | None = None,
                  lift: Iterable[str] = ("restriction", "objection"), forever: bool = False) -> dict | None:
    """The next state of a subject's entry after a request (None = tombstone).

    Pure. Raises RightsError for a request that cannot apply (lifting an erasure).
    """
    if action not in ACTIONS:
        raise RightsError(f"unknown action {action!r}")
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise RightsError(f"retention window must be 1..{MAX_WINDOW_DAYS} days")
    e = dict(current) if current else {
        "v": SCHEMA_VERSION, "tenant": tenant, "kind": kind, "subject": subject,
        "erased": False, "restricted": False, "objected": False,
        "erased_ms": None, "restricted_ms": None, "objected_ms": None,
        "created_ms": now_ms, "expires_ms": None,
    }
    e["updated_ms"] = now_ms
    e["last_action"] = action
    e["request_id"] = request_id or new_request_id()
    if action == "export":
        return current  # access is not a state change (it is audited)
    if action == "erase":
        if not e["erased"]:
            e["erased"], e["erased_ms"] = True, now_ms
        e["expires_ms"] = None if forever else max(e.get("expires_ms") or 0, now_ms + window_days * DAY_MS)
    elif action == "restrict":
        if not e["restricted"]:
            e["restricted"], e["restricted_ms"] = True, now_ms
    elif action == "object":
        if not e["objected"]:
            e["objected"], e["objected_ms"] = True, now_ms
    elif action == "lift":
        if e["erased"]:
            raise RightsError("an erasure cannot be lifted")
        lift = set(lift)
        unknown = lift - {"restriction", "objection"}
        if unknown:
            raise RightsError(f"can lift restriction and/or objection, not {sorted(unknown)}")
        if "restriction" in lift:
            e["restricted"], e["restricted_ms"] = False, None
        if "objection" in lift:
            e["objected"], e["objected_ms"] = False, None
        if not (e["restricted"] or e["objected"]):
            return None  # nothing left to remember: tombstone at once
    return e


def routes_of(entry: dict | None, now_ms: int | None = None) -> Routes:
    if entry is None:
        return ALL_ROUTES
    exp = entry.get("expires_ms")
    if exp is not None and now_ms is not None and now_ms >= exp:
        return ALL_ROUTES
    if entry.get("erased") or entry.get("restricted"):
        return NO_ROUTES
    if entry.get("objected"):
        return Routes(True, False)
    return ALL_ROUTES


def expired_keys(table: Mapping[bytes, bytes], now_ms: int) -> list[bytes]:
    """Keys of entries whose suppression has expired (to tombstone)."""
    out = []
    for k, v in table.items():
        try:
            e = json.loads(v)
        except ValueError:
            continue
        exp = e.get("expires_ms") if isinstance(e, dict) else None
        if exp is not None and now_ms >= exp:
            out.append(k)
    return out


class SubjectState:
    """The rights table of one worker: (tenant, kind, subject key) -> entry.

    Built from the compacted topic (`from_table`) and kept current with `apply`
    (the signature fits `CompactedTable.on_change`: table, key, value). Lookups are
    pure and cheap; `masks` is the vectorised form the pipeline calls per batch, and it
    returns all-True without hashing when a tenant has no entries (the usual case).
    """

    def __init__(self) -> None:
        self._by_tenant: dict[str, dict[tuple[str, str], dict]] = {}
        self._offboarded: set[str] = set()
        self.version = 0

    @classmethod
    def from_table(cls, table: Mapping[bytes, bytes]) -> "SubjectState":
        s = cls()
        for k, v in table.items():
            s.apply(None, k, v)
        return s

    def apply(self, _table, key: bytes, value: bytes | None) -> None:
        try:
            tenant, kind, skey = parse_table_key(key)
        except (ValueError, UnicodeDecodeError):
            return  # not ours; the topic holds only our keys
        self.version += 1
        if kind == TENANT_MARKER_KIND:
            if value is None:
                self._offboarded.discard(tenant)
            else:
                self._offboarded.add(tenant)
            return
        entries = self._by_tenant.setdefault(tenant, {})
        if value is None:
            entries.pop((kind, skey), None)
            if not entries:
                self._by_tenant.pop(tenant, None)
            return
        try:
            e = json.loads(value)
        except ValueError:
            return
        if isinstance(e, dict):
            entries[(kind, skey)] = e

    # --- lookups (pure) ---------------------------------------------------------------
    def is_offboarded(self, tenant: str) -> bool:
        return tenant in self._offboarded

    def has_entries(self, tenant: str) -> bool:
        return tenant in self._offboarded or tenant in self._by_tenant

    def entry(self, tenant: str, kind: str, skey: str) -> dict | None:
        return self._by_tenant.get(tenant, {}).get((kind, skey))

    def status(self, tenant: str, kind: str, skey: str | None, now_ms: int | None = None) -> Routes:
        """Allowed routes of one subject (None subject: no person, every route)."""
        if tenant in self._offboarded:
            return NO_ROUTES
        if skey is None:
            return ALL_ROUTES
        return routes_of(self.entry(tenant, kind, skey), now_ms)

    def masks(self, tenant: str, kind: str, skeys: Sequence[str | None],
              now_ms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(allow_processor, allow_controller) boolean arrays for a batch of subject keys."""
        n = len(skeys)
        if tenant in self._offboarded:
            return np.zeros(n, bool), np.zeros(n, bool)
        entries = self._by_tenant.get(tenant)
        proc = np.ones(n, bool)
        ctrl = np.ones(n, bool)
        if not entries:
            return proc, ctrl
        for i, k in enumerate(skeys):
            if k is None:
                continue
            e = entries.get((kind, k))
            if e is not None:
                r = routes_of(e, now_ms)
                proc[i], ctrl[i] = r.processor, r.controller
        return proc, ctrl

    def subjects_of(self, tenant: str) -> list[tuple[str, str]]:
        return list(self._by_tenant.get(tenant, {}))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_tenant.values())


@dataclass
class SubjectGate:
    """What the worker's subject-rights gate calls: raw ids in, route masks out.

    `masks(tenant, imeis, drivers)` combines the device's and the driver's status: a
    record passes a route only if both its device and its driver (when it has one) may.
    Hashing happens only for tenants that have entries.
    """

    state: SubjectState
    keyer: SubjectKeyer
    clock: Callable[[], int] = field(default=lambda: int(time.time() * 1000))

    def masks(self, tenant: str, imeis: Sequence[str | bytes], drivers: Sequence[str | bytes | None] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        n = len(imeis)
        if not self.state.has_entries(tenant):
            return np.ones(n, bool), np.ones(n, bool)
        now = self.clock()
        proc, ctrl = self.state.masks(tenant, "device", self.keyer.keys(tenant, "device", imeis), now)
        if drivers is not None:
            dp, dc = self.state.masks(tenant, "driver", self.keyer.keys(tenant, "driver", drivers), now)
            proc &= dp
            ctrl &= dc
        return proc, ctrl

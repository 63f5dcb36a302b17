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
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from fleetcloak.anonymize.keystore import TableKeyStore

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
    """Subject keys for raw ids, cached per (tenant, kind, raw value as given).

    `secret_for(tenant) -> bytes | Secret` supplies the tenant's non-rotating subjects
    secret. The cache is a dict per (tenant, kind), cleared when it holds `cache_size`
    entries (a device fleet repeats the same ids batch after batch) and at least once a
    day (`max_age_s`): it maps raw ids to keys, so it must not outlive a window either.
    """

    def __init__(self, secret_for: Callable[[str], object], cache_size: int = 200_000,
                 max_age_s: float = 86_400.0) -> None:
        self._secret_for = secret_for
        self._secrets: dict[str, bytes] = {}
        self._cache: dict[tuple[str, str], dict] = {}
        self.cache_size = cache_size
        self.max_age_s = max_age_s
        self._born = time.monotonic()

    def _secret(self, tenant: str) -> bytes:
        s = self._secrets.get(tenant)
        if s is None:
            v = self._secret_for(tenant)
            s = v.reveal() if hasattr(v, "reveal") else bytes(v)
            self._secrets[tenant] = s
        return s

    def key(self, tenant: str, kind: str, raw: str | bytes | int) -> str:
        if time.monotonic() - self._born > self.max_age_s:
            self._cache.clear()
            self._secrets.clear()  # re-read: an offboarded tenant's secret is gone
            self._born = time.monotonic()
        cache = self._cache.get((tenant, kind))
        if cache is None:
            cache = self._cache[(tenant, kind)] = {}
        k = cache.get(raw)
        if k is None:
            k = subject_key(self._secret(tenant), kind, canonical_id(kind, raw))
            if len(cache) >= self.cache_size:
                cache.clear()
            cache[raw] = k
        return k

    def keys(self, tenant: str, kind: str, raws: Sequence[str | bytes | None]) -> list[str | None]:
        return [None if r is None else self.key(tenant, kind, r) for r in raws]

    def forget(self, tenant: str) -> None:
        """Drop a tenant's secret and cached keys (offboarding)."""
        self._secrets.pop(tenant, None)
        for k in [k for k in self._cache if k[0] == tenant]:
            del self._cache[k]

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
        self._offboarded: dict[str, int | None] = {}  # tenant -> marker expiry (ms) or None
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
                self._offboarded.pop(tenant, None)
            else:
                try:
                    exp = json.loads(value).get("expires_ms")
                except (ValueError, AttributeError):
                    exp = None
                self._offboarded[tenant] = exp
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
    def is_offboarded(self, tenant: str, now_ms: int | None = None) -> bool:
        if tenant not in self._offboarded:
            return False
        exp = self._offboarded[tenant]
        return exp is None or now_ms is None or now_ms < exp

    def has_entries(self, tenant: str) -> bool:
        return tenant in self._offboarded or tenant in self._by_tenant

    def entry(self, tenant: str, kind: str, skey: str) -> dict | None:
        return self._by_tenant.get(tenant, {}).get((kind, skey))

    def status(self, tenant: str, kind: str, skey: str | None, now_ms: int | None = None) -> Routes:
        """Allowed routes of one subject (None subject: no person, every route)."""
        if self.is_offboarded(tenant, now_ms):
            return NO_ROUTES
        if skey is None:
            return ALL_ROUTES
        return routes_of(self.entry(tenant, kind, skey), now_ms)

    def masks(self, tenant: str, kind: str, skeys: Sequence[str | None],
              now_ms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(allow_processor, allow_controller) boolean arrays for a batch of subject keys."""
        n = len(skeys)
        if self.is_offboarded(tenant, now_ms):
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
        proc, ctrl = np.ones(n, bool), np.ones(n, bool)
        if not self.state.has_entries(tenant):
            return proc, ctrl
        now = self.clock()
        if self.state.is_offboarded(tenant, now):
            return np.zeros(n, bool), np.zeros(n, bool)
        self._apply(tenant, "device", imeis, now, proc, ctrl)
        if drivers is not None:
            self._apply(tenant, "driver", drivers, now, proc, ctrl)
        return proc, ctrl

    def _apply(self, tenant: str, kind: str, raws: Sequence, now: int, proc: np.ndarray, ctrl: np.ndarray) -> None:
        # Each distinct id is hashed and looked up once per batch (a batch of 10,000
        # records holds a few thousand devices at most); the result is spread back.
        index: dict = {}
        inv = np.fromiter((index.setdefault(r, len(index)) for r in raws), dtype=np.intp, count=len(raws))
        blocked_p, blocked_c = [], []
        for raw, i in index.items():
            if raw is None:
                continue
            r = self.state.status(tenant, kind, self.keyer.key(tenant, kind, raw), now)
            if not r.processor:
                blocked_p.append(i)
            if not r.controller:
                blocked_c.append(i)
        if blocked_p:
            up = np.ones(len(index), bool)
            up[blocked_p] = False
            proc &= up[inv]
        if blocked_c:
            uc = np.ones(len(index), bool)
            uc[blocked_c] = False
            ctrl &= uc[inv]


def gate_from_snapshot(subjects: Mapping[bytes, bytes], keyring, *, keyer: SubjectKeyer | None = None,
                       clock: Callable[[], int] | None = None) -> SubjectGate:
    """The gate a pipeline factory builds from `ControlSnapshot.subjects` and its Keyring.
    Pass the previous gate's `keyer` when rebuilding, to keep its cache of subject keys."""
    gate = SubjectGate(SubjectState.from_table(subjects), keyer or keyer_for(keyring))
    if clock is not None:
        gate.clock = clock
    return gate


# =========================================================================== Kafka side
# The operations behind `fleetcloak subject ...` and `fleetcloak tenant offboard`. Each
# publishes to the compacted topics, appends one audit event, and returns a
# confirmation dict (with the UTC timestamp the CLI prints).

POLICIES_TOPIC = "fleetcloak.policies"
KEYS_TOPIC = "fleetcloak.keys"
OFFBOARD_MARKER_DAYS = 7  # the raw topic's retention: no raw record of the tenant outlives it


class TopicKeyStore(TableKeyStore):
    """A CLI's view of the `fleetcloak.keys` topic: loaded whole (to the high-watermark),
    changed in memory, published on `flush()` (put = the wrapped value under its name,
    delete = tombstone)."""

    @classmethod
    async def load(cls, bootstrap: str) -> "TopicKeyStore":
        from fleetcloak.streams.control import read_tables

        return cls((await read_tables(bootstrap, [KEYS_TOPIC]))[KEYS_TOPIC])

    async def flush(self, bootstrap: str) -> list[str]:
        """Publish the pending changes; returns the names tombstoned."""
        from fleetcloak.streams.control import publish_to

        ops = self.drain()
        if ops:
            await publish_to(bootstrap, KEYS_TOPIC, ops)
        return [n.decode() for n, v in ops if v is None]


@dataclass
class Keys:
    """The keyring a rights command works with, and how to persist its changes."""

    keyring: object
    store: object

    async def flush(self, bootstrap: str) -> list[str]:
        if isinstance(self.store, TopicKeyStore):
            return await self.store.flush(bootstrap)
        return []  # a FileKeyStore writes through


async def open_keys(bootstrap: str, *, keystore_file: str | None = None, master_key_file: str | None = None,
                    master=None, topic_only: bool = False) -> Keys:
    """The master key (given, or loaded in production mode: refuse without one) and the
    shared keystore: a FileKeyStore when a file is named (--keystore or
    $FLEETCLOAK_KEYSTORE), else the `fleetcloak.keys` topic."""
    import os

    from fleetcloak.anonymize.keys import Keyring
    from fleetcloak.anonymize.keystore import FileKeyStore, load_master_key

    if master is None:
        master = load_master_key("production", key_file=master_key_file)
    path = None if topic_only else (keystore_file or os.environ.get("FLEETCLOAK_KEYSTORE"))
    store = FileKeyStore(path) if path else await TopicKeyStore.load(bootstrap)
    return Keys(Keyring(store, master, create=False), store)


async def ensure_control_topics(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from fleetcloak.streams.topics import CONTROL_TOPICS, control_topic, ensure_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await ensure_topics(admin, [control_topic(t) for t in CONTROL_TOPICS])
    finally:
        await admin.close()


def parse_policy_value(key: bytes, value: bytes):
    """A fleetcloak.policies value (policy JSON) -> TenantPolicy/ServicePolicy."""
    from fleetcloak.anonymize.policy import load_policy, parse_policy_text

    data = parse_policy_text(value.decode("utf-8"), key.decode(errors="replace"))
    if isinstance(data.get("policy"), dict):  # tolerate an envelope {"policy": {...}, ...}
        data = data["policy"]
    return load_policy(data, key.decode(errors="replace"))


async def read_control(bootstrap: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(policies, subjects) tables, read to the high-watermark."""
    from fleetcloak.streams.control import read_tables

    tables = await read_tables(bootstrap, [POLICIES_TOPIC, SUBJECTS_TOPIC])
    return tables[POLICIES_TOPIC], tables[SUBJECTS_TOPIC]


def tenant_policy(policies: Mapping[bytes, bytes], tenant: str):
    value = policies.get(tenant.encode())
    if value is None:
        raise RightsError(f"tenant {tenant!r} has no policy on this broker (check the tenant id; "
                          "`fleetcloak policy apply` publishes policies)")
    return parse_policy_value(tenant.encode(), value)


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ensure_subjects_secret(keys: Keys, tenant: str) -> bool:
    """Create the tenant's static root if it has none yet (True when created). The rights
    CLI may: an erasure must be recordable before the worker ever saw the tenant."""
    from fleetcloak.anonymize.epochs import STATIC

    if keys.keyring.has_epoch(tenant, STATIC):
        return False
    keys.keyring.ensure_epochs(tenant, "never")
    return True


async def subject_request(bootstrap: str, action: str, *, tenant: str, kind: str, raw_id: str | bytes,
                          keys: Keys, audit, now_ms: int | None = None, lift: Iterable[str] = ("restriction", "objection"),
                          forever: bool = False) -> dict:
    """erase | restrict | object | lift: publish the subject's new state, act on keys
    (erase), audit, and return the confirmation."""
    if action not in ("erase", "restrict", "object", "lift"):
        raise RightsError(f"{action!r} is not a state-changing request")
    from fleetcloak.streams.control import publish_to

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    canonical = canonical_id(kind, raw_id)
    await ensure_control_topics(bootstrap)
    policies, subjects = await read_control(bootstrap)
    policy = tenant_policy(policies, tenant)
    created_secret = _ensure_subjects_secret(keys, tenant)
    skey = keys.keyring.subject_key(tenant, kind, canonical)
    tkey = table_key(tenant, kind, skey)
    current = json.loads(subjects[tkey]) if tkey in subjects else None
    request_id = new_request_id()
    details: dict = {"request_id": request_id, "kind": kind}
    try:
        new = apply_request(current, action, tenant=tenant, kind=kind, subject=skey, now_ms=now_ms,
                            window_days=policy.retention_days, request_id=request_id, lift=lift, forever=forever)
    except RightsError as exc:
        await audit.append(f"subject.{action}", tenant=tenant, subject=skey, outcome="refused",
                           details={**details, "reason": str(exc)})
        raise
    if created_secret:
        await keys.flush(bootstrap)  # the subjects secret must be visible before the entry
        details["created_subjects_secret"] = True
    # 1. the state: every worker stops (or resumes) within seconds of this record
    try:
        await publish_to(bootstrap, SUBJECTS_TOPIC,
                         [(tkey, None if new is None else json.dumps(new, sort_keys=True).encode())])
    except Exception as exc:
        await audit.append(f"subject.{action}", tenant=tenant, subject=skey, outcome="failed",
                           details={**details, "error": f"publishing the state failed: {type(exc).__name__}"})
        raise
    outcome = "ok"
    tombstoned: list[str] = []
    notes: list[str] = []
    if action == "erase":
        # 2. the controller-route salt: earlier analytics records become unlinkable
        try:
            keys.keyring.erase_subject_by_key(tenant, skey, now_ms=now_ms)
            flushed = await keys.flush(bootstrap)
            tombstoned = ([f"{KEYS_TOPIC}:{n}" for n in flushed] if isinstance(keys.store, TopicKeyStore)
                          else [f"keystore:subject/{tenant}/{skey}"])
        except Exception as exc:
            outcome = "partial"
            details["error"] = f"destroying the controller-route salt failed: {type(exc).__name__}: {exc}"
        if kind == "device" and canonical.decode() in policy.device_family:
            notes.append("the device is still listed in the tenant's policy; its records are suppressed "
                         "until expires_at, remove it from the policy to stop them for good")
    state = None if new is None else {k: new[k] for k in ("erased", "restricted", "objected", "expires_ms")}
    details.update({"state": state, "tombstoned": tombstoned})
    await audit.append(f"subject.{action}", tenant=tenant, subject=skey, outcome=outcome, details=details)
    routes = routes_of(new, now_ms)
    return {
        "action": action, "tenant": tenant, "kind": kind, "subject": skey, "request_id": request_id,
        "outcome": outcome, "at": _iso(now_ms), "at_ms": now_ms,
        "routes": {"processor": routes.processor, "controller": routes.controller},
        "state": state, "expires_at": _iso(new["expires_ms"]) if new and new.get("expires_ms") else None,
        "tombstoned": tombstoned, "notes": notes, **({"error": details["error"]} if "error" in details else {}),
    }


def export_candidates(keys: Keys, policy, kind: str, canonical: bytes) -> tuple[set[str], list[str]]:
    """Every value the tenant's topic can hold for this subject: the processor pseudonym
    of each key epoch still alive, plus the identifier itself where the policy keeps it.
    Returns (candidates, epochs used)."""
    from fleetcloak.anonymize.keys import EpochDestroyed, EpochMissing
    from fleetcloak.anonymize.pseudonyms import Pseudonymizer

    p = Pseudonymizer(keys.keyring, tenant=policy.tenant, route="processor", rotation=policy.pseudonym_rotation)
    out: set[str] = set()
    used = []
    for info in keys.keyring.epochs(policy.tenant):
        if info.state != "active":
            continue
        try:
            out.add(p.pseudonym(kind, canonical, info.epoch))
            used.append(info.epoch)
        except (EpochDestroyed, EpochMissing):
            continue
    if kind not in policy.processor.pseudonymise:
        if kind == "device":
            out.add(canonical.decode("ascii"))
        else:
            out.update({canonical.hex(), canonical.hex().upper()})
    return out, used


FIELD_OF_KIND = {"device": "device", "driver": "driver"}


def match_records(value: bytes, field_name: str, candidates: set[str]) -> list[dict]:
    """Records of one output message (one record, or {"records": [...]}) naming the subject."""
    try:
        doc = json.loads(value)
    except (ValueError, TypeError):
        return []
    records = doc.get("records") if isinstance(doc, dict) and isinstance(doc.get("records"), list) else [doc]
    return [r for r in records if isinstance(r, dict) and r.get(field_name) in candidates]


async def scan_topic(bootstrap: str, topic: str, predicate: Callable[[bytes], list[dict]]):
    """Yield the matches of every message of every partition, read to the high-watermark."""
    from aiokafka import TopicPartition

    from fleetcloak.streams.audit import new_consumer, read_partition

    consumer = new_consumer(bootstrap)
    await consumer.start()
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic) or set()
        for p in sorted(parts):
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            async for rec in read_partition(consumer, tp):
                if rec.value is not None:
                    for r in predicate(rec.value):
                        yield r
    finally:
        await consumer.stop()


async def subject_export(bootstrap: str, *, tenant: str, kind: str, raw_id: str | bytes, keys: Keys, audit,
                         write: Callable[[str], None], now_ms: int | None = None) -> dict:
    """Every record of the subject still held in `tenant.<tenant>.telemetry`, written as
    JSON lines through `write`; audited with the count (never the data)."""
    from fleetcloak.streams.topics import tenant_topic_name

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    canonical = canonical_id(kind, raw_id)
    await ensure_control_topics(bootstrap)
    policies, _ = await read_control(bootstrap)
    policy = tenant_policy(policies, tenant)
    field_name = FIELD_OF_KIND.get(kind)
    if field_name is None:
        raise RightsError(f"export supports device and driver subjects, not {kind!r}")
    from fleetcloak.anonymize.epochs import STATIC

    skey = keys.keyring.subject_key(tenant, kind, canonical) if keys.keyring.has_epoch(tenant, STATIC) else None
    candidates, epochs = export_candidates(keys, policy, kind, canonical)
    topic = tenant_topic_name(tenant)
    n = 0
    async for r in scan_topic(bootstrap, topic, lambda v: match_records(v, field_name, candidates)):
        write(json.dumps(r, sort_keys=True, separators=(",", ":")))
        n += 1
    request_id = new_request_id()
    await audit.append("subject.export", tenant=tenant, subject=skey, outcome="ok",
                       details={"request_id": request_id, "kind": kind, "topic": topic, "records": n,
                                "epochs": epochs})
    return {"action": "export", "tenant": tenant, "kind": kind, "subject": skey, "request_id": request_id,
            "outcome": "ok", "at": _iso(now_ms), "at_ms": now_ms, "topic": topic, "records": n,
            "epochs_searched": epochs}


async def tenant_offboard(bootstrap: str, *, tenant: str, keys: Keys, audit, now_ms: int | None = None) -> dict:
    """Art. 28(3)(g): stop the tenant at once, destroy all its keys, delete its topics,
    tombstone its policy and subject entries; report what was removed."""
    from aiokafka.admin import AIOKafkaAdminClient

    from fleetcloak.streams.control import publish_to

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    await ensure_control_topics(bootstrap)
    policies, subjects = await read_control(bootstrap)
    errors: list[str] = []
    # 1. stop: a marker every worker's gate applies within seconds (no route for the tenant)
    marker = {"v": SCHEMA_VERSION, "tenant": tenant, "offboarded": True, "offboarded_ms": now_ms,
              "expires_ms": now_ms + OFFBOARD_MARKER_DAYS * DAY_MS}
    await publish_to(bootstrap, SUBJECTS_TOPIC, [(table_key(tenant, TENANT_MARKER_KIND, "*"),
                                                 json.dumps(marker, sort_keys=True).encode())])
    # 2. the policy (the device registry forgets the tenant's devices)
    had_policy = tenant.encode() in policies
    if had_policy:
        await publish_to(bootstrap, POLICIES_TOPIC, [(tenant.encode(), None)])
    # 3. keys: every epoch (the static root takes the subjects secret with it), and the
    #    tenant's per-subject salts and erasure markers
    destroyed = keys.keyring.destroy_scope(tenant, now_ms=now_ms)
    salts = [n for n in keys.store.names(f"subject/{tenant}/")] + [n for n in keys.store.names(f"erased/{tenant}/")]
    for n in salts:
        keys.store.delete(n)
    keys.keyring.invalidate()
    try:
        await keys.flush(bootstrap)
    except Exception as exc:
        errors.append(f"publishing key destruction failed: {exc}")
    # 4. topics
    prefix = f"tenant.{tenant}."
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if doomed:
            resp = await admin.delete_topics(doomed)
            for name, code, *_ in resp.topic_error_codes:
                if code:
                    errors.append(f"deleting {name}: error {code}")
        left = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()
    # 5. subject entries
    mine = [k for k in subjects if k.startswith(f"{tenant}/".encode()) and not k.endswith(b"/tenant/*")]
    if mine:
        await publish_to(bootstrap, SUBJECTS_TOPIC, [(k, None) for k in mine])
    report = {
        "action": "offboard", "tenant": tenant, "at": _iso(now_ms), "at_ms": now_ms,
        "outcome": "ok" if not errors and not left else "partial",
        "topics_deleted": [t for t in doomed if t not in left], "topics_left": left,
        "key_epochs_destroyed": destroyed, "subject_keys_deleted": len(salts),
        "policy_tombstoned": had_policy, "subject_entries_tombstoned": len(mine),
        "stop_marker_expires_at": _iso(marker["expires_ms"]), "errors": errors,
    }
    await audit.append("tenant.offboard", tenant=tenant, outcome=report["outcome"],
                       details={k: v for k, v in report.items() if k not in ("action", "tenant", "at", "at_ms", "outcome")})
    return report


async def expire_subject_entries(bootstrap: str, *, now_ms: int | None = None, audit=None) -> list[str]:
    """Tombstone subject entries (and offboarding markers) whose expiry has passed; one
    audit event per entry. The worker runs it with the epoch-expiry job."""
    from fleetcloak.streams.control import publish_to, read_tables

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    table = (await read_tables(bootstrap, [SUBJECTS_TOPIC]))[SUBJECTS_TOPIC]
    keys = expired_keys(table, now_ms)
    if keys:
        await publish_to(bootstrap, SUBJECTS_TOPIC, [(k, None) for k in keys])
    out = []
    for k in keys:
        tenant, kind, skey = parse_table_key(k)
        out.append(k.decode())
        if audit is not None:
            await audit.append("subject.expire", tenant=tenant, subject=None if kind == TENANT_MARKER_KIND else skey,
                               details={"kind": kind, "reason": "suppression window over"})
    return out


def sweep_resurrected_salts(keys: "Keys") -> list[tuple[str, str]]:
    """Delete every controller-route salt that exists beside an erasure marker.

    A race can bring one back: a worker that met the subject before it saw the erasure
    mints a salt and publishes it after the CLI's tombstone. The gate still blocks the
    subject while its entry lives, but the salt would make the old analytics records
    linkable again after that. Run by the housekeeping round (and safe to run anytime).
    Returns (tenant, subject key) pairs whose salt was deleted.
    """
    out = []
    for name in keys.store.names("erased/"):
        _, tenant, skey = name.split("/", 2)
        salt = f"subject/{tenant}/{skey}"
        if keys.store.get(salt) is not None:
            keys.store.delete(salt)
            out.append((tenant, skey))
    if out:
        keys.keyring.invalidate()
    return out

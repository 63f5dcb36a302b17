"""Retention enforced by the system: topic settings, the worker's start-up guard, and the
automatic destruction of key epochs older than the window.

Where the 12-month guarantee comes from, honestly:

 (a) the ingest gate (the worker drops records older than the tenant's window);
 (b) topic configuration: every telemetry topic's `retention.ms` is at most the window
     and its cleanup policy deletes. Apache Kafka enforces this; the embedded Tansu
     broker stores and describes the settings but never deletes anything
     (CONVENTIONS.md section 7), so on Tansu (b) is a checked setting, not a deletion;
 (c) crypto-shredding: key epochs whose every record is older than the window are
     destroyed, so pseudonyms from that period can no longer be recomputed or linked.
     This holds on any broker, and for copies outside Kafka (backups, consumers'
     databases), which no topic setting can reach.

The pure part (`classify`, `evaluate`) decides what a topic's limit is and what is wrong
with it; the Kafka part describes topics, fixes them with IncrementalAlterConfigs (Tansu
does not offer AlterConfigs, and aiokafka's admin client only speaks AlterConfigs, so the
request is defined here with aiokafka's protocol types), and audits every fix.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
MAX_DAYS = 365
RAW_DAYS = 7          # streams/topics.py: raw frames hold raw ids, kept only to replay
DEADLETTER_DAYS = 30  # streams/topics.py
TELEMETRY_KINDS = ("raw", "deadletter", "tenant", "analytics")
_TENANT_TOPIC = re.compile(r"^tenant\.([^.]+)\.telemetry$")


class RetentionViolation(RuntimeError):
    """A topic's settings break the retention cap; the worker must not start."""

    def __init__(self, findings: Sequence["Finding"]):
        self.findings = list(findings)
        lines = [f"  {f.topic}: {'; '.join(f.violations)}" for f in self.findings]
        super().__init__(
            "refusing to run: topic settings violate the retention cap\n" + "\n".join(lines)
            + "\nfix with: fleetcloak retention audit --broker HOST:PORT --fix"
        )


# --------------------------------------------------------------------------- pure

def classify(topic: str) -> tuple[str, str | None] | None:
    """(kind, tenant) of a fleetcloak topic, None for anything else."""
    if topic == "telematics.raw":
        return "raw", None
    if topic == "telematics.deadletter":
        return "deadletter", None
    if topic == "analytics.telemetry":
        return "analytics", None
    m = _TENANT_TOPIC.match(topic)
    if m:
        return "tenant", m.group(1)
    if topic == "fleetcloak.audit":
        return "audit", None
    if topic.startswith("fleetcloak."):
        return "control", None
    if topic.startswith("telematics.") or topic.startswith("tenant."):
        return "telemetry-other", None
    return None


@dataclass
class Finding:
    topic: str
    kind: str
    tenant: str | None
    retention_ms: int | None
    cleanup_policy: str | None
    limit_ms: int | None                 # the most this topic may keep (None: no cap)
    limit_source: str = ""
    violations: list[str] = field(default_factory=list)
    fix: dict[str, str] = field(default_factory=dict)   # config -> value that corrects it

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {
            "topic": self.topic, "kind": self.kind, "tenant": self.tenant,
            "retention_ms": self.retention_ms,
            "retention_days": None if self.retention_ms in (None, -1) else round(self.retention_ms / DAY_MS, 3),
            "cleanup_policy": self.cleanup_policy, "limit_ms": self.limit_ms,
            "limit_days": None if self.limit_ms is None else self.limit_ms / DAY_MS,
            "limit_source": self.limit_source, "ok": self.ok, "violations": self.violations,
            "fix": self.fix,
        }


def _days(ms: int) -> str:
    return "infinite" if ms == -1 else f"{ms / DAY_MS:g} days"


def evaluate(topic: str, configs: Mapping[str, str | None], *, windows: Mapping[str, int] | None = None,
             max_days: int = MAX_DAYS, analytics_days: int | None = None) -> Finding | None:
    """What is wrong with one topic's described configs (None: not a fleetcloak topic).

    windows: tenant -> retention_days from its policy (capped at max_days).
    """
    c = classify(topic)
    if c is None:
        return None
    kind, tenant = c
    max_days = min(max_days, MAX_DAYS)
    raw_ret = configs.get("retention.ms")
    try:
        retention = None if raw_ret is None else int(raw_ret)
    except ValueError:
        retention = None
    policy = configs.get("cleanup.policy")
    policies = set((policy or "").replace(" ", "").split(",")) - {""}
    if policy is None and kind not in ("control",):
        # Not described: Tansu describes only what was set explicitly; Kafka always
        # describes it. The broker default is `delete` on both.
        policies = {"delete"}
    f = Finding(topic, kind, tenant, retention, policy, None)

    if kind in TELEMETRY_KINDS or kind == "telemetry-other":
        if kind == "raw":
            days, f.limit_source = min(RAW_DAYS, max_days), "raw frames: 7 days"
        elif kind == "deadletter":
            days, f.limit_source = min(DEADLETTER_DAYS, max_days), "dead letters: 30 days"
        elif kind == "tenant" and windows and tenant in windows:
            days, f.limit_source = min(int(windows[tenant]), max_days), f"tenant {tenant} policy"
        elif kind == "analytics" and analytics_days:
            days, f.limit_source = min(int(analytics_days), max_days), "service policy"
        else:
            days, f.limit_source = max_days, f"cap ({max_days} days)"
        f.limit_ms = days * DAY_MS
        if retention is None:
            f.violations.append("retention.ms not described by the broker")
            f.fix["retention.ms"] = str(f.limit_ms)
        elif retention < 0:
            f.violations.append(f"retention.ms is infinite (-1); limit {days} days ({f.limit_source})")
            f.fix["retention.ms"] = str(f.limit_ms)
        elif retention > f.limit_ms:
            f.violations.append(f"retention.ms {_days(retention)} exceeds {days} days ({f.limit_source})")
            f.fix["retention.ms"] = str(f.limit_ms)
        if "delete" not in policies:
            f.violations.append(f"cleanup.policy {policy!r} never deletes old records (needs 'delete')")
            f.fix["cleanup.policy"] = "delete"
    elif kind == "control":
        # A tombstone only removes a destroyed key's wrapped value or an erased subject's
        # old state if the topic is compacted; with `delete` and a long retention they stay.
        if policies != {"compact"}:
            f.violations.append(f"cleanup.policy {policy!r}: a control topic must be compacted "
                                "(tombstones must remove superseded values)")
            f.fix["cleanup.policy"] = "compact"
    elif kind == "audit":
        if "compact" in policies:
            f.violations.append("cleanup.policy includes compact: compaction would drop audit events and break the chain")
            f.fix["cleanup.policy"] = "delete"
    return f


# --------------------------------------------------------------------------- IncrementalAlterConfigs
# KIP-339, API key 44. Request v0: resources [resource_type int8, resource_name string,
# configs [name string, config_operation int8 (0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT),
# value nullable string]], validate_only bool. Response v0: throttle_time_ms int32,
# responses [error_code int16, error_message nullable string, resource_type int8,
# resource_name string]. v1 has the same layout (v1 only changes broker semantics).

class IncrementalAlterConfigsResponse_v0(Response):
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("responses", Array(
            ("error_code", Int16),
            ("error_message", String("utf-8")),
            ("resource_type", Int8),
            ("resource_name", String("utf-8")),
        )),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        ("resources", Array(
            ("resource_type", Int8),
            ("resource_name", String("utf-8")),
            ("configs", Array(
                ("name", String("utf-8")),
                ("config_operation", Int8),
                ("value", String("utf-8")),
            )),
        )),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequest_v0]):
    API_KEY = 44

    def __init__(self, resources: list, validate_only: bool = False) -> None:
        self._resources = resources
        self._validate_only = validate_only

    def build(self, request_struct_class):
        return request_struct_class(self._resources, self._validate_only)


TOPIC_RESOURCE = 2
OP_SET = 0


async def incremental_alter_topic_configs(admin, topic: str, configs: Mapping[str, str]) -> None:
    """SET `configs` on one topic with IncrementalAlterConfigs; raise on a broker error."""
    resource = (TOPIC_RESOURCE, topic, [(k, OP_SET, v) for k, v in configs.items()])
    response = await admin._send_request(IncrementalAlterConfigsRequest([resource]))
    for error_code, error_message, _rtype, name in response.responses:
        if error_code:
            raise RuntimeError(f"IncrementalAlterConfigs({name}) failed: error {error_code} {error_message}")


# --------------------------------------------------------------------------- Kafka side

async def describe(admin, topics: Sequence[str]) -> dict[str, dict[str, str]]:
    from fleetcloak.streams.topics import describe_topic_configs

    return await describe_topic_configs(admin, list(topics), ["retention.ms", "cleanup.policy"])


async def audit_topics(admin, *, windows: Mapping[str, int] | None = None, max_days: int = MAX_DAYS,
                       analytics_days: int | None = None, topics: Iterable[str] | None = None) -> list[Finding]:
    """Every fleetcloak topic (or just `topics`) with its retention and what is wrong."""
    names = sorted(topics) if topics is not None else sorted(t for t in await admin.list_topics() if classify(t))
    described = await describe(admin, names) if names else {}
    out = []
    for name in names:
        f = evaluate(name, described.get(name, {}), windows=windows, max_days=max_days,
                     analytics_days=analytics_days)
        if f is not None:
            out.append(f)
    return out


async def fix_topics(admin, findings: Sequence[Finding], audit=None) -> list[dict]:
    """Apply each finding's fix, describe it back, and audit it (one event per topic)."""
    results = []
    for f in findings:
        if f.ok or not f.fix:
            continue
        before = {"retention.ms": f.retention_ms, "cleanup.policy": f.cleanup_policy}
        try:
            await incremental_alter_topic_configs(admin, f.topic, f.fix)
            after = (await describe(admin, [f.topic])).get(f.topic, {})
            outcome = "ok" if all(after.get(k) == v for k, v in f.fix.items()) else "failed"
            error = None if outcome == "ok" else f"described back as {after}"
        except Exception as exc:  # reported and audited, then the next topic
            after, outcome, error = {}, "failed", str(exc)
        result = {"topic": f.topic, "set": dict(f.fix), "before": before, "after": after,
                  "outcome": outcome, "error": error}
        results.append(result)
        if audit is not None:
            await audit.append("retention.fix", tenant=f.tenant, outcome=outcome,
                               details={"topic": f.topic, "set": dict(f.fix), "before": before,
                                        "limit_source": f.limit_source, "violations": f.violations,
                                        **({"error": error} if error else {})})
    return results


async def assert_retention_ok(admin, topics: Iterable[str], *, windows: Mapping[str, int] | None = None,
                              max_days: int = MAX_DAYS, analytics_days: int | None = None) -> list[Finding]:
    """The worker's start-up guard: raise RetentionViolation if any of `topics` that
    exists breaks the cap (missing topics are the creator's business, created with the
    right settings by streams.topics). Returns the findings when all is well."""
    names = list(topics)
    present = set(await admin.list_topics())
    findings = await audit_topics(admin, windows=windows, max_days=max_days, analytics_days=analytics_days,
                                  topics=[t for t in names if t in present and classify(t)])
    bad = [f for f in findings if not f.ok]
    if bad:
        raise RetentionViolation(bad)
    return findings


# --------------------------------------------------------------------------- policies

def windows_from_policies(policies: Mapping[bytes, bytes]) -> tuple[dict[str, int], int | None]:
    """(tenant -> retention_days, service retention_days) from the fleetcloak.policies
    table (values are policy JSON). Unparseable entries are skipped with a warning."""
    from fleetcloak.streams.rights import parse_policy_value

    tenants: dict[str, int] = {}
    service = None
    for key, value in policies.items():
        try:
            pol = parse_policy_value(key, value)
        except Exception as exc:
            log.warning("skipping policy %r: %s", key, exc)
            continue
        if hasattr(pol, "tenant"):
            tenants[pol.tenant] = pol.retention_days
        else:
            service = pol.retention_days
    return tenants, service


async def read_windows(bootstrap: str) -> tuple[dict[str, int], int | None]:
    from fleetcloak.streams.control import read_tables

    try:
        tables = await read_tables(bootstrap, ["fleetcloak.policies"])
    except LookupError:
        return {}, None
    return windows_from_policies(tables["fleetcloak.policies"])


# --------------------------------------------------------------------------- key epochs

async def expire_key_epochs(keyring, windows: Mapping[str, int], *, now_ms: int | None = None, audit=None,
                            service_days: int | None = None) -> list[dict]:
    """Destroy every key epoch older than its scope's window and audit each destruction.

    `keyring` is anonymize's Keyring (its `destroy_expired(now_ms, retention_days,
    scope=...)` does the shredding). Every scope the keystore knows is visited: a tenant
    without a policy (removed, or not yet read) gets the 365-day cap, the service scope
    the service policy's window. The worker runs this at start-up and periodically
    (e.g. hourly); `fleetcloak retention audit --fix` does not (it is about topics).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    known = {info.scope for info in keyring.epochs()}
    scopes = sorted(known | set(windows) | {"service"})
    destroyed = []
    for scope in scopes:
        days = service_days if scope == "service" else windows.get(scope)
        days = min(int(days or MAX_DAYS), MAX_DAYS)
        try:
            done = list(keyring.destroy_expired(now_ms, days, scope=scope) or ())
            error = None
        except Exception as exc:
            done, error = [], f"{type(exc).__name__}: {exc}"
            log.error("destroying expired epochs of %s failed: %s", scope, error)
        for _scope, epoch in done:
            destroyed.append({"scope": scope, "epoch": epoch, "retention_days": days})
            if audit is not None:
                await audit.append("key.destroy", tenant=None if scope == "service" else scope,
                                   details={"scope": scope, "epoch": str(epoch), "reason": "retention",
                                            "retention_days": days})
        if error is not None and audit is not None:
            await audit.append("key.destroy", tenant=None if scope == "service" else scope, outcome="failed",
                               details={"scope": scope, "reason": "retention", "error": error})
    return destroyed


async def housekeeping(bootstrap: str, keys, *, audit=None, now_ms: int | None = None) -> dict:
    """One round of the retention jobs a worker runs at start-up and periodically
    (hourly is plenty: epochs are days to years long), and `fleetcloak retention expire`
    runs by hand:

      1. destroy key epochs older than each scope's window (windows from the policies
         topic, the cap for scopes without a policy), publishing the destruction;
      2. delete any controller salt re-created beside an erasure marker by a race;
      3. tombstone subject entries whose suppression window is over.

    `keys` is streams.rights.Keys (a Keyring and a way to publish its store's changes).
    Every destruction and expiry is audited.
    """
    from fleetcloak.streams.rights import expire_subject_entries

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    minted = await prepare_epochs(bootstrap, keys, now_ms=now_ms)
    if minted and audit is not None:
        for scope, epoch in minted:
            await audit.append("key.create", tenant=None if scope == "service" else scope,
                               details={"scope": scope, "epoch": epoch, "reason": "prepared ahead"})
    windows, service_days = await read_windows(bootstrap)
    destroyed = await expire_key_epochs(keys.keyring, windows, now_ms=now_ms, audit=None, service_days=service_days)
    if destroyed:
        await keys.flush(bootstrap)  # the tombstones reach fleetcloak.keys before we say so
        if audit is not None:
            for d in destroyed:
                await audit.append("key.destroy", tenant=None if d["scope"] == "service" else d["scope"],
                                   details={"scope": d["scope"], "epoch": d["epoch"], "reason": "retention",
                                            "retention_days": d["retention_days"]})
    from fleetcloak.streams.rights import sweep_resurrected_salts

    swept = sweep_resurrected_salts(keys)
    if swept:
        await keys.flush(bootstrap)
        if audit is not None:
            for tenant, skey in swept:
                await audit.append("key.destroy", tenant=tenant, subject=skey,
                                   details={"reason": "erased subject's salt re-created by a race", "what": "subject salt"})
    expired = await expire_subject_entries(bootstrap, now_ms=now_ms, audit=audit)
    return {"key_epochs_destroyed": destroyed, "subject_entries_expired": len(expired),
            "resurrected_salts_deleted": len(swept), "key_epochs_created": [f"{s}/{e}" for s, e in minted]}


async def prepare_epochs(bootstrap: str, keys, *, now_ms: int) -> list[tuple[str, str]]:
    """Mint (and publish) the epochs the policies on the broker will need: the next one
    before it starts, so no worker ever has to. Returns the (scope, epoch)s created."""
    from fleetcloak.anonymize.policy import PolicySet
    from fleetcloak.streams.rights import parse_policy_value, read_control

    policies, _ = await read_control(bootstrap)
    parsed = []
    for key, value in policies.items():
        try:
            parsed.append(parse_policy_value(key, value))
        except Exception as exc:  # an unreadable policy is the worker's to refuse, not ours to guess
            log.warning("housekeeping: skipping unreadable policy %r: %r", key.decode(errors="replace"), exc)
    if not parsed:
        return []
    ring = keys.keyring
    before = {(e.scope, e.epoch) for e in ring.epochs() if e.state == "active"}
    ring.prepare(PolicySet(parsed), now_ms)
    minted = sorted({(e.scope, e.epoch) for e in ring.epochs() if e.state == "active"} - before)
    if minted:
        await keys.flush(bootstrap)
    return minted


class DropAuditor:
    """Audits the ingest gate's drops in aggregate: one event per (rule, tenant) per
    flush, with the count and the period, never one per record (a backlog of a million
    too-old records is one event, not a million).

    The worker adds each batch's `Counts.dropped` (keys (rule, tenant)) with `add()` and
    calls `await flush(audit)` periodically (e.g. every 60 s) and at shutdown.
    """

    def __init__(self, clock: Callable[[], int] | None = None,
                 rules: Iterable[str] | None = ("too_old", "future", "subject_blocked")) -> None:
        from collections import Counter

        self.rules = None if rules is None else frozenset(rules)  # None: every drop rule
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._pending: Counter = Counter()
        self._since = self._clock()

    def add(self, dropped: Mapping[tuple[str, str], int]) -> None:
        self._pending.update({k: v for k, v in dropped.items()
                              if v and (self.rules is None or k[0] in self.rules)})

    async def flush(self, audit) -> int:
        """Append the pending counts (returns the number of events written). Counts whose
        event could not be appended stay pending for the next flush."""
        pending, self._pending = self._pending, type(self._pending)()
        since, self._since = self._since, self._clock()
        n = 0
        items = sorted(pending.items())
        try:
            for (rule, tenant), count in items:
                await audit.append("retention.drop" if rule in ("too_old", "future") else "subject.drop",
                                   tenant=tenant or None,
                                   details={"rule": rule, "records": int(count), "from_ms": since, "to_ms": self._since})
                n += 1
        except BaseException:
            self._pending.update(dict(items[n:]))
            self._since = since
            raise
        return n


async def startup_guard(bootstrap: str, topics: Iterable[str] | None = None, *, max_days: int = MAX_DAYS) -> list[Finding]:
    """What a worker runs before its first batch: every fleetcloak topic (or `topics`)
    within the cap, with each tenant's window from the policies topic; raises
    RetentionViolation (the worker must exit non-zero and say so) otherwise."""
    from aiokafka.admin import AIOKafkaAdminClient

    windows, service_days = await read_windows(bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = list(topics) if topics is not None else [t for t in await admin.list_topics() if classify(t)]
        return await assert_retention_ok(admin, names, windows=windows, max_days=max_days, analytics_days=service_days)
    finally:
        await admin.close()


class RetentionDuties:
    """The retention work a running worker owes, as one task to start beside its loop:

        duties = RetentionDuties(bootstrap, master)       # the worker's MasterKey
        task = asyncio.create_task(duties.run())
        ... after each delivered batch: duties.drops.add(result.counts.dropped)
        ... at shutdown: duties.stop(); await task        (flushes the last drop counts)

    Every `audit_every_s` it audits the ingest gate's drops (one event per rule and
    tenant); every `housekeeping_every_s` (and once at start) it runs `housekeeping`:
    shred expired key epochs, delete resurrected salts, expire subject entries. It uses
    its own view of the keys topic (so the pipeline's key table only ever sees the
    tombstones arrive through the control plane) and appends as operator
    "service:<name>". Several workers running it at once is harmless: destroying an
    epoch twice and tombstoning twice change nothing (each worker audits what it did).
    A failed round is logged and retried at the next interval; it never stops the worker.
    """

    def __init__(self, bootstrap: str, master, *, name: str = "worker", housekeeping_every_s: float = 3600.0,
                 audit_every_s: float = 60.0) -> None:
        self.bootstrap = bootstrap
        self.master = master
        self.name = name
        self.housekeeping_every_s = housekeeping_every_s
        self.audit_every_s = audit_every_s
        self.drops = DropAuditor()
        self.rounds = 0
        self.last_result: dict | None = None
        self._stop = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def housekeeping_round(self, audit) -> dict:
        from fleetcloak.streams.rights import ensure_control_topics, open_keys

        await ensure_control_topics(self.bootstrap)
        keys = await open_keys(self.bootstrap, master=self.master, topic_only=True)
        self.last_result = await housekeeping(self.bootstrap, keys, audit=audit)
        self.rounds += 1
        return self.last_result

    async def run(self) -> None:
        import asyncio

        from fleetcloak.streams.audit import AuditLog

        self._stop = asyncio.Event()
        audit = AuditLog(self.bootstrap, operator=f"service:{self.name}", operator_source="service")
        await audit.start()
        next_house = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_house:
                    try:
                        await self.housekeeping_round(audit)
                    except Exception as exc:
                        log.error("retention housekeeping failed (retried in %.0fs): %r", self.housekeeping_every_s, exc)
                    next_house = now + self.housekeeping_every_s
                try:
                    await self.drops.flush(audit)
                except Exception as exc:
                    log.error("auditing dropped records failed (counts kept for the next flush): %r", exc)
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=min(self.audit_every_s, self.housekeeping_every_s))
                except asyncio.TimeoutError:
                    pass
            await self.drops.flush(audit)
        finally:
            await audit.stop()

"""Every fleetcloak topic with its settings written down, and `ensure_topics`.

Settings are explicit because Kafka's broker defaults (7 days, delete) are right for
none of these topics except by accident:

- `telematics.raw`         7 days. Raw frames hold raw IMEIs and driver ids: keep them
                           only long enough to replay a failed worker, no longer.
- `telematics.deadletter`  30 days. Original bytes + reason, for someone to look at.
                           Also raw data, hence short.
- `tenant.<t>.telemetry`   the tenant's retention window, at most 365 days.
- `analytics.telemetry`    the controller route's window, at most 365 days.
- `fleetcloak.policies`, `fleetcloak.keys`, `fleetcloak.subjects`
                           cleanup.policy=compact: the latest value per key is the
                           state; a tombstone (null value) deletes the key.
- `fleetcloak.audit`       append-only, retention.ms=-1 (kept forever). The audit trail
                           is the controller's evidence of accountability (GDPR art.
                           5(2), 30 and 33): it must outlive the telemetry it speaks of,
                           or an erasure could not be proven after the data is gone.
                           It never holds a raw identifier (subjects appear only as
                           pseudonyms), so keeping it does not keep personal data that
                           storage limitation (art. 5(1)(e)) would require us to drop.
                           Operators with a legal-hold period can lower it by hand.

On Tansu these settings are stored and described back but not enforced (nothing is
deleted or compacted); on Apache Kafka they are. `ensure_topics` never alters an
existing topic: it reports the difference, and `fleetcloak retention audit --fix`
(IncrementalAlterConfigs) is the tool that corrects it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000
MAX_TELEMETRY_RETENTION_DAYS = 365

RAW = "telematics.raw"
DEADLETTER = "telematics.deadletter"
ANALYTICS = "analytics.telemetry"
POLICIES = "fleetcloak.policies"
KEYS = "fleetcloak.keys"
SUBJECTS = "fleetcloak.subjects"
AUDIT = "fleetcloak.audit"
CONTROL_TOPICS = (POLICIES, KEYS, SUBJECTS)

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    replication_factor: int = 1

    @property
    def retention_ms(self) -> int | None:
        value = self.configs.get("retention.ms")
        return None if value is None else int(value)


def _retention(days: int) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(days * DAY_MS)}


def _window_days(days: int) -> int:
    if not 1 <= days <= MAX_TELEMETRY_RETENTION_DAYS:
        raise ValueError(f"retention window must be 1..{MAX_TELEMETRY_RETENTION_DAYS} days, got {days}")
    return days


def tenant_topic_name(tenant: str) -> str:
    """`tenant.<slug>.telemetry`. The slug is a tenant's public name, never an identifier of a person."""
    if not _SLUG.match(tenant):
        raise ValueError(f"tenant slug must match {_SLUG.pattern}: {tenant!r}")
    return f"tenant.{tenant}.telemetry"


def raw_topic(partitions: int = 4, replication_factor: int = 1) -> TopicSpec:
    return TopicSpec(RAW, partitions, _retention(7), replication_factor)


def deadletter_topic(partitions: int = 1, replication_factor: int = 1) -> TopicSpec:
    return TopicSpec(DEADLETTER, partitions, _retention(30), replication_factor)


def tenant_topic(tenant: str, window_days: int = MAX_TELEMETRY_RETENTION_DAYS,
                 partitions: int = 4, replication_factor: int = 1) -> TopicSpec:
    return TopicSpec(tenant_topic_name(tenant), partitions, _retention(_window_days(window_days)), replication_factor)


def analytics_topic(window_days: int = MAX_TELEMETRY_RETENTION_DAYS,
                    partitions: int = 4, replication_factor: int = 1) -> TopicSpec:
    return TopicSpec(ANALYTICS, partitions, _retention(_window_days(window_days)), replication_factor)


def control_topic(name: str, replication_factor: int = 1) -> TopicSpec:
    # One partition: a control topic is small and read whole by every worker, and one
    # partition keeps the order of changes across keys (a policy before its tombstone).
    return TopicSpec(name, 1, {"cleanup.policy": "compact"}, replication_factor)


def audit_topic(replication_factor: int = 1) -> TopicSpec:
    return TopicSpec(AUDIT, 1, {"cleanup.policy": "delete", "retention.ms": "-1"}, replication_factor)


def core_topics(raw_partitions: int = 4, analytics_window_days: int = MAX_TELEMETRY_RETENTION_DAYS,
                replication_factor: int = 1) -> list[TopicSpec]:
    """The topics that exist whatever the tenants: raw, dead letters, analytics, control, audit."""
    rf = replication_factor
    return [
        raw_topic(raw_partitions, rf),
        deadletter_topic(replication_factor=rf),
        analytics_topic(analytics_window_days, replication_factor=rf),
        *(control_topic(name, rf) for name in CONTROL_TOPICS),
        audit_topic(rf),
    ]


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: dict[str, dict[str, str]] = field(default_factory=dict)   # name -> described configs
    mismatches: dict[str, dict[str, tuple[str, str | None]]] = field(default_factory=dict)  # name -> key -> (want, have)


TOPIC_ALREADY_EXISTS = 36


async def describe_topic_configs(admin, names: list[str], keys: list[str] | None = None) -> dict[str, dict[str, str]]:
    """name -> {config: value} as the broker describes it back (only `keys`, or all)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not names:
        return {}
    # Ask for every config and filter here: Tansu 0.6 drops the connection when the
    # request names the configs it wants (measured); Kafka answers both forms.
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for error_code, error_message, _rtype, name, entries in response.resources:
            if error_code:
                raise RuntimeError(f"describe_configs({name}) failed: {error_code} {error_message}")
            out[name] = {e[0]: e[1] for e in entries if keys is None or e[0] in keys}
    return out


async def ensure_topics(admin, specs: list[TopicSpec]) -> TopicReport:
    """Create the topics that are missing, with their settings; describe those that exist.

    Never alters an existing topic: a difference is logged as a warning and returned in
    `report.mismatches` (retention fixes are an audited, separate action).
    """
    from aiokafka.admin import NewTopic

    report = TopicReport()
    existing = set(await admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if missing:
        response = await admin.create_topics([
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in missing
        ])
        for name, error_code, error_message in response.topic_errors:
            if error_code == 0:
                report.created.append(name)
            elif error_code == TOPIC_ALREADY_EXISTS:  # another worker won the race
                existing.add(name)
            else:
                raise RuntimeError(f"creating topic {name} failed: error {error_code} {error_message}")
    present = [s for s in specs if s.name not in report.created]
    keys = sorted({k for s in present for k in s.configs})
    described = await describe_topic_configs(admin, [s.name for s in present], keys)
    for spec in present:
        have = described.get(spec.name, {})
        report.existing[spec.name] = have
        diff = {k: (v, have.get(k)) for k, v in spec.configs.items() if have.get(k) != v}
        if diff:
            report.mismatches[spec.name] = diff
            log.warning("topic %s exists with settings different from fleetcloak's: %s (not altered)",
                        spec.name, ", ".join(f"{k}={h!r} (want {w!r})" for k, (w, h) in diff.items()))
    for name in report.created:
        log.info("created topic %s", name)
    return report

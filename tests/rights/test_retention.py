"""Retention: the pure evaluation, and audit/--fix/guard on the real broker."""
import asyncio
import json

import pytest

from fleetcloak.streams.retention import (
    DAY_MS, RetentionViolation, assert_retention_ok, classify, evaluate, expire_key_epochs,
)


def test_classify():
    assert classify("tenant.acme.telemetry") == ("tenant", "acme")
    assert classify("analytics.telemetry")[0] == "analytics"
    assert classify("fleetcloak.keys")[0] == "control" and classify("fleetcloak.audit")[0] == "audit"
    assert classify("telematics.raw")[0] == "raw" and classify("unrelated") is None


@pytest.mark.parametrize("ret,ok", [(400 * DAY_MS, False), (-1, False), (365 * DAY_MS, True), (30 * DAY_MS, True)])
def test_tenant_topic_against_the_cap(ret, ok):
    f = evaluate("tenant.acme.telemetry", {"retention.ms": str(ret), "cleanup.policy": "delete"})
    assert f.ok is ok and (ok or f.fix == {"retention.ms": str(365 * DAY_MS)})


def test_tenant_window_from_policy_and_other_rules():
    f = evaluate("tenant.acme.telemetry", {"retention.ms": str(100 * DAY_MS)}, windows={"acme": 90})
    assert not f.ok and f.fix["retention.ms"] == str(90 * DAY_MS) and "policy" in f.limit_source
    assert not evaluate("telematics.raw", {"retention.ms": str(30 * DAY_MS)}).ok  # raw: 7 days
    compact_only = evaluate("analytics.telemetry", {"retention.ms": str(DAY_MS), "cleanup.policy": "compact"})
    assert compact_only.fix == {"cleanup.policy": "delete"}
    assert evaluate("fleetcloak.keys", {"cleanup.policy": "delete"}).fix == {"cleanup.policy": "compact"}
    assert not evaluate("fleetcloak.audit", {"cleanup.policy": "compact"}).ok
    assert evaluate("fleetcloak.audit", {"cleanup.policy": "delete", "retention.ms": "-1"}).ok
    # --max-days lowers every telemetry cap, never raises it
    assert evaluate("tenant.b.telemetry", {"retention.ms": str(100 * DAY_MS)}, max_days=30).fix
    assert evaluate("tenant.b.telemetry", {"retention.ms": str(365 * DAY_MS)}, max_days=900).ok


def test_epoch_expiry_job_shreds_old_epochs_and_audits_each(monkeypatch):
    from fleetcloak.anonymize.epochs import epoch_id
    from fleetcloak.anonymize.keys import EpochDestroyed, Keyring
    from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore

    events = []

    class Audit:
        async def append(self, action, **kw):
            events.append((action, kw))

    now = 1_763_800_000_000  # Nov 2025
    keyring = Keyring(MemoryKeyStore(), MasterKey.generate())
    for months_ago in (14, 4, 0):
        keyring.ensure_epochs("acme", "monthly", now - months_ago * 30 * DAY_MS, ahead=0)
    keyring.ensure_epochs("service", "monthly", now - 13 * 30 * DAY_MS, ahead=0)
    old = epoch_id(now - 14 * 30 * DAY_MS)
    out = asyncio.run(expire_key_epochs(keyring, {"acme": 90}, now_ms=now, audit=Audit()))
    gone = {(d["scope"], d["epoch"]) for d in out}
    assert ("acme", old) in gone and ("acme", epoch_id(now)) not in gone
    assert ("acme", epoch_id(now - 4 * 30 * DAY_MS)) in gone  # older than the tenant's 90 days
    assert ("service", epoch_id(now - 13 * 30 * DAY_MS)) in gone  # the 365-day cap
    with pytest.raises(EpochDestroyed):
        keyring.root("acme", old)
    assert len(events) == len(out) and all(a == "key.destroy" for a, _ in events)
    assert {kw["details"]["epoch"] for _, kw in events} == {e for _, e in gone}


@pytest.mark.broker
def test_retention_audit_flags_400_days_and_fix_brings_it_to_365(broker, capsys):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from fleetcloak.cli import main as cli
    from fleetcloak.streams.topics import describe_topic_configs

    topic = "tenant.rt400.telemetry"

    async def create():
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
                "retention.ms": str(400 * DAY_MS), "cleanup.policy": "delete"})])
            with pytest.raises(RetentionViolation, match=topic):
                await assert_retention_ok(admin, [topic])
        finally:
            await admin.close()

    async def check():
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await assert_retention_ok(admin, [topic, "does.not.exist"])
            return (await describe_topic_configs(admin, [topic], ["retention.ms"]))[topic]
        finally:
            await admin.close()

    asyncio.run(create())
    capsys.readouterr()
    assert cli(["retention", "audit", "--broker", broker, "--json"]) == 2
    found = {t["topic"]: t for t in json.loads(capsys.readouterr().out)["topics"]}
    assert not found[topic]["ok"] and found[topic]["retention_days"] == 400
    assert cli(["retention", "audit", "--broker", broker, "--fix", "--json", "--operator", "ops"]) == 0
    assert check_result(asyncio.run(check()))
    capsys.readouterr()
    assert cli(["audit", "show", "--broker", broker, "--json", "--action", "retention.fix"]) == 0
    fixes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    mine = [e for e in fixes if e["details"]["topic"] == topic]
    assert mine and mine[-1]["operator"] == "ops" and mine[-1]["outcome"] == "ok"
    assert mine[-1]["details"]["set"] == {"retention.ms": str(365 * DAY_MS)}
    assert cli(["audit", "verify", "--broker", broker]) == 0


def check_result(described):
    assert described["retention.ms"] == str(365 * DAY_MS)
    return True


def test_drop_auditor_aggregates_per_rule_and_tenant():
    from collections import Counter

    from fleetcloak.streams.retention import DropAuditor

    events = []

    class Audit:
        async def append(self, action, **kw):
            events.append((action, kw))

    clock = iter(range(1000, 10_000, 1000))
    d = DropAuditor(clock=lambda: next(clock))
    d.add(Counter({("too_old", "acme"): 3, ("future", "acme"): 0}))
    d.add(Counter({("too_old", "acme"): 2, ("too_old", ""): 1}))
    assert asyncio.run(d.flush(Audit())) == 2
    assert [(kw["tenant"], kw["details"]["rule"], kw["details"]["records"]) for _, kw in events] == [
        (None, "too_old", 1), ("acme", "too_old", 5)]
    assert events[0][1]["details"]["from_ms"] == 1000 and events[0][1]["details"]["to_ms"] == 2000
    assert asyncio.run(d.flush(Audit())) == 0


def test_windows_from_the_policies_table():
    from fleetcloak.streams.retention import windows_from_policies

    table = {b"acme": json.dumps({"tenant": "acme", "retention_days": 90}).encode(),
             b"beta": b"tenant: beta\nretention_days: 30\n",
             b"broken": b"{not json",
             b"fleetcloak-analytics": json.dumps({"service": "fleetcloak-analytics", "retention_days": 200}).encode()}
    assert windows_from_policies(table) == ({"acme": 90, "beta": 30}, 200)

"""Topic settings: created as written, described back by the real broker."""
import asyncio

import pytest

from fleetcloak.streams import topics as T


def test_specs_carry_explicit_settings():
    specs = {s.name: s for s in T.core_topics(raw_partitions=6)}
    assert specs[T.RAW].partitions == 6
    assert specs[T.RAW].retention_ms == 7 * T.DAY_MS
    assert specs[T.DEADLETTER].retention_ms == 30 * T.DAY_MS
    assert specs[T.ANALYTICS].retention_ms == 365 * T.DAY_MS
    for name in T.CONTROL_TOPICS:
        assert specs[name].configs == {"cleanup.policy": "compact"}
    assert specs[T.AUDIT].configs == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert T.tenant_topic("acme", 90).retention_ms == 90 * T.DAY_MS


@pytest.mark.parametrize("days", [0, 366, 400])
def test_telemetry_retention_is_capped(days):
    with pytest.raises(ValueError):
        T.tenant_topic("acme", days)
    with pytest.raises(ValueError):
        T.analytics_topic(days)


@pytest.mark.parametrize("slug", ["", "Acme", "a.b", "x" * 80, "../etc"])
def test_tenant_slug_is_checked(slug):
    with pytest.raises(ValueError):
        T.tenant_topic_name(slug)


def _ensure(bootstrap, specs):
    from aiokafka.admin import AIOKafkaAdminClient

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return await T.ensure_topics(admin, specs)
        finally:
            await admin.close()
    return asyncio.run(go())


@pytest.mark.broker
def test_create_with_settings_and_describe_back(broker):
    from fleetcloak.streams.topicio import unique_name

    slug = unique_name("t").replace(".", "-")
    specs = [T.tenant_topic(slug, 90, partitions=3), T.TopicSpec(unique_name("ctl"), 1, {"cleanup.policy": "compact"}),
             T.TopicSpec(unique_name("audit"), 1, {"cleanup.policy": "delete", "retention.ms": "-1"})]
    report = _ensure(broker, specs)
    assert sorted(report.created) == sorted(s.name for s in specs)

    again = _ensure(broker, specs)  # idempotent: nothing created, settings described back as written
    assert again.created == [] and again.mismatches == {}
    for spec in specs:
        assert again.existing[spec.name] == spec.configs

    differing = T.TopicSpec(specs[0].name, 3, {"cleanup.policy": "delete", "retention.ms": str(400 * T.DAY_MS)})
    report = _ensure(broker, [differing])  # reported, never altered
    assert report.mismatches[differing.name]["retention.ms"] == (str(400 * T.DAY_MS), str(90 * T.DAY_MS))
    assert _ensure(broker, [specs[0]]).mismatches == {}


@pytest.mark.broker
def test_topics_cli_creates_core_topics(broker, capsys):
    from fleetcloak.cli import main

    assert main(["topics", "create", "--broker", broker, "--tenant", "cli-tenant:30"]) in (0, 3)
    assert main(["topics", "describe", "--broker", broker]) == 0
    out = capsys.readouterr().out
    assert f"tenant.cli-tenant.telemetry partitions=4 cleanup.policy=delete retention.ms={30 * T.DAY_MS}" in out
    assert "fleetcloak.policies partitions=1 cleanup.policy=compact" in out
    assert f"telematics.raw partitions=4 cleanup.policy=delete retention.ms={7 * T.DAY_MS}" in out

"""`fleetcloak topics create|describe --broker HOST:PORT`: the topics with their settings.

`create` makes the missing ones (never alters an existing topic; differences are
reported and make the exit status 3) and is what docker-compose's one-shot `topics`
service runs. `describe` prints every fleetcloak topic's settings as the broker
describes them back.
"""
from __future__ import annotations

import asyncio
import sys

from fleetcloak.streams.cli_args import add_broker


def add_arguments(p) -> None:
    p.add_argument("action", choices=["create", "describe"])
    add_broker(p)
    p.add_argument("--raw-partitions", type=int, default=4)
    p.add_argument("--replication-factor", type=int, default=1)
    p.add_argument("--analytics-days", type=int, default=365, help="analytics.telemetry retention (<= 365)")
    p.add_argument("--tenant", action="append", default=[], metavar="SLUG[:DAYS]",
                   help="also create tenant.<SLUG>.telemetry with a DAYS retention window (default 365); repeatable")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker (default 60)")


def _specs(args):
    from fleetcloak.streams.topics import core_topics, tenant_topic

    specs = core_topics(args.raw_partitions, args.analytics_days, args.replication_factor)
    for item in args.tenant:
        slug, _, days = item.partition(":")
        specs.append(tenant_topic(slug, int(days) if days else 365, replication_factor=args.replication_factor))
    return specs


async def _admin(bootstrap: str, timeout: float):
    """An admin client, retrying until the broker answers (compose starts us alongside Kafka)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fleetcloak-topics")
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(1.0)


async def _create(args) -> int:
    from fleetcloak.streams.topics import ensure_topics

    admin = await _admin(args.broker, args.timeout)
    try:
        report = await ensure_topics(admin, _specs(args))
    finally:
        await admin.close()
    for name in report.created:
        print(f"created  {name}")
    for name, configs in report.existing.items():
        flag = "  DIFFERS: " + ", ".join(f"{k}={h} (want {w})" for k, (w, h) in report.mismatches[name].items()) \
            if name in report.mismatches else ""
        print(f"exists   {name} {' '.join(f'{k}={v}' for k, v in sorted(configs.items()))}{flag}")
    return 3 if report.mismatches else 0


async def _describe(args) -> int:
    from fleetcloak.streams.topics import describe_topic_configs

    admin = await _admin(args.broker, args.timeout)
    try:
        names = sorted(t for t in await admin.list_topics()
                       if t.startswith(("telematics.", "tenant.", "analytics.", "fleetcloak.")))
        described = await describe_topic_configs(admin, names, ["cleanup.policy", "retention.ms"])
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)} if names else {}
    finally:
        await admin.close()
    for name in names:
        configs = described.get(name, {})
        print(f"{name} partitions={partitions.get(name, '?')} "
              + " ".join(f"{k}={v}" for k, v in sorted(configs.items())))
    return 0


def run(args) -> int:
    try:
        return asyncio.run(_create(args) if args.action == "create" else _describe(args))
    except ValueError as exc:
        print(f"fleetcloak topics: {exc}", file=sys.stderr)
        return 2

"""`fleetcloak tenant offboard --tenant T --broker B [--dry-run]` (GDPR art. 28(3)(g)).

Stops the tenant at once (a marker every worker's gate applies within seconds),
tombstones its policy, destroys every key epoch of the tenant (crypto-shredding: its
pseudonyms can no longer be computed, anywhere) with its per-subject keys, deletes its
topics (tenant.<T>.*), tombstones its subject entries, audits, and reports what was
removed. Irreversible: --dry-run shows what would go. Exit 0 done, 2 partial or refused.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tenant_action", metavar="{offboard}", required=True)
    o = sub.add_parser("offboard", help="destroy a tenant's keys, delete its topics, report")
    o.add_argument("--tenant", required=True)
    o.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    from fleetcloak.streams.cli_subject import add_common

    add_common(o)


async def _dry_run(args) -> dict:
    from aiokafka.admin import AIOKafkaAdminClient

    from fleetcloak.streams.rights import open_keys, read_control

    keys = await open_keys(args.broker, keystore_file=args.keystore, master_key_file=args.master_key_file)
    policies, subjects = await read_control(args.broker)
    admin = AIOKafkaAdminClient(bootstrap_servers=args.broker)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(f"tenant.{args.tenant}."))
    finally:
        await admin.close()
    return {"action": "offboard (dry run)", "tenant": args.tenant, "topics": topics,
            "key_epochs": [e.epoch for e in keys.keyring.epochs(args.tenant) if e.state == "active"],
            "subject_keys": len(keys.store.names(f"subject/{args.tenant}/")) + len(keys.store.names(f"erased/{args.tenant}/")),
            "policy": args.tenant.encode() in policies,
            "subject_entries": sum(1 for k in subjects if k.startswith(f"{args.tenant}/".encode()))}


async def _run(args) -> int:
    from fleetcloak.anonymize.keystore import KeyStoreError
    from fleetcloak.streams.audit import AuditLog
    from fleetcloak.streams.rights import ensure_control_topics, open_keys, tenant_offboard

    try:
        if args.dry_run:
            await ensure_control_topics(args.broker)
            print(json.dumps(await _dry_run(args), sort_keys=True, indent=None if args.json else 1))
            return 0
        keys = await open_keys(args.broker, keystore_file=args.keystore, master_key_file=args.master_key_file)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    async with AuditLog(args.broker, operator=args.operator) as audit:
        report = await tenant_offboard(args.broker, tenant=args.tenant, keys=keys, audit=audit)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"offboarded tenant {report['tenant']} at {report['at']}: {report['outcome']}")
        print(f"  topics deleted: {', '.join(report['topics_deleted']) or 'none'}")
        if report["topics_left"]:
            print(f"  topics NOT deleted: {', '.join(report['topics_left'])}")
        print(f"  key epochs destroyed: {', '.join(report['key_epochs_destroyed']) or 'none'}")
        print(f"  per-subject keys and erasure markers deleted: {report['subject_keys_deleted']}")
        print(f"  policy tombstoned: {'yes' if report['policy_tombstoned'] else 'no policy was published'}")
        print(f"  subject entries tombstoned: {report['subject_entries_tombstoned']}")
        for e in report["errors"]:
            print(f"  error: {e}")
    return 0 if report["outcome"] == "ok" else 2


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))

"""`fleetcloak retention audit --broker HOST:PORT [--fix] [--max-days 365]`.

Lists every fleetcloak topic with its retention and cleanup policy, flags violations
(telemetry kept longer than the tenant's window or forever, control topics that do not
compact, an audit topic that would compact), and with --fix corrects them with
IncrementalAlterConfigs, describes them back and appends one audit event per fix.
Exit status: 0 when everything is (now) within the limits, 2 otherwise.

`fleetcloak retention expire --broker HOST:PORT` runs the retention jobs once (what a
worker runs periodically): destroys key epochs older than each window (crypto-shredding)
and tombstones subject entries whose suppression window is over, auditing each.
"""
from __future__ import annotations

import argparse
import asyncio
import json

from fleetcloak.streams.cli_args import add_broker, add_keys, add_operator


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="retention_command", metavar="{audit,expire}", required=True)
    a = sub.add_parser("audit", help="list topic retention, flag violations, --fix them")
    add_broker(a)
    a.add_argument("--fix", action="store_true", help="correct violations (IncrementalAlterConfigs), audited")
    a.add_argument("--max-days", type=int, default=365, help="the cap for telemetry topics (<= 365)")
    add_operator(a, "runs this")
    a.add_argument("--json", action="store_true", help="print JSON")
    e = sub.add_parser("expire", help="destroy expired key epochs, expire subject entries (audited)")
    add_broker(e)
    add_operator(e, "runs this")
    add_keys(e)
    e.add_argument("--json", action="store_true", help="print JSON")


async def _audit(args) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    from fleetcloak.streams.audit import AuditLog
    from fleetcloak.streams.retention import MAX_DAYS, audit_topics, fix_topics, read_windows

    if not 1 <= args.max_days <= MAX_DAYS:
        raise SystemExit(f"--max-days must be 1..{MAX_DAYS}")
    windows, service_days = await read_windows(args.broker)
    admin = AIOKafkaAdminClient(bootstrap_servers=args.broker)
    await admin.start()
    try:
        findings = await audit_topics(admin, windows=windows, max_days=args.max_days, analytics_days=service_days)
        fixes = []
        if args.fix and any(not f.ok for f in findings):
            async with AuditLog(args.broker, operator=args.operator) as audit:
                fixes = await fix_topics(admin, findings, audit)
            after = await audit_topics(admin, windows=windows, max_days=args.max_days, analytics_days=service_days)
        else:
            after = findings
    finally:
        await admin.close()
    if args.json:
        print(json.dumps({"topics": [f.to_dict() for f in findings], "fixes": fixes,
                          "after": [f.to_dict() for f in after]}, sort_keys=True))
    else:
        for f in findings:
            ret = "unset" if f.retention_ms is None else ("infinite" if f.retention_ms < 0 else f"{f.retention_ms / 86_400_000:g}d")
            limit = "-" if f.limit_ms is None else f"{f.limit_ms / 86_400_000:g}d"
            mark = "ok " if f.ok else "BAD"
            print(f"{mark} {f.topic:<40} retention={ret:<9} limit={limit:<6} cleanup={f.cleanup_policy or 'default'}"
                  + ("" if f.ok else "  <- " + "; ".join(f.violations)))
        for r in fixes:
            print(f"fixed {r['topic']}: set {r['set']} -> {r['outcome']}" + (f" ({r['error']})" if r["error"] else ""))
        bad = [f for f in after if not f.ok]
        print(f"{len(findings)} topics, {sum(not f.ok for f in findings)} violations"
              + (f", {len(bad)} left after --fix" if args.fix else ("" if not bad else "; run with --fix to correct")))
    return 0 if all(f.ok for f in after) else 2


async def _expire(args) -> int:
    import sys

    from fleetcloak.anonymize.keystore import KeyStoreError
    from fleetcloak.streams.audit import AuditLog
    from fleetcloak.streams.retention import housekeeping
    from fleetcloak.streams.rights import ensure_control_topics, open_keys

    try:
        await ensure_control_topics(args.broker)
        keys = await open_keys(args.broker, keystore_file=args.keystore, master_key_file=args.master_key_file)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    async with AuditLog(args.broker, operator=args.operator) as audit:
        result = await housekeeping(args.broker, keys, audit=audit)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for d in result["key_epochs_destroyed"]:
            print(f"destroyed key epoch {d['epoch']} of {d['scope']} (window {d['retention_days']} days)")
        print(f"{len(result['key_epochs_destroyed'])} key epoch(s) destroyed, "
              f"{result['subject_entries_expired']} subject entr(y/ies) expired")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.retention_command == "expire":
        return asyncio.run(_expire(args))
    return asyncio.run(_audit(args))

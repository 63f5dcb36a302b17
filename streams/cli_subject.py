"""`fleetcloak subject erase|restrict|object|lift|export --tenant T (--imei X | --driver HEX) --broker B`.

erase     processing of the subject stops at once (both routes); their controller-route
          salt is destroyed, so their earlier analytics records are unlinkable for good.
restrict  neither route until `lift`.
object    leaves the controller route (analytics) only.
lift      ends a restriction and/or an objection (--restriction / --objection; both by
          default). An erasure cannot be lifted.
export    every record of the subject still held in tenant.<T>.telemetry, as JSON lines
          (stdout or --out FILE); the summary goes to stderr.

Each request is published to the compacted fleetcloak.subjects topic (every running
worker applies it within seconds), appended to the audit trail, and confirmed with a
UTC timestamp (JSON with --json). The subject appears only as its keyed subject key.
Needs the master key ($FLEETCLOAK_MASTER_KEY or --master-key-file) and the shared
keystore (the fleetcloak.keys topic, or --keystore FILE / $FLEETCLOAK_KEYSTORE).
Exit status: 0 done, 2 refused or invalid.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from fleetcloak.streams.cli_args import add_broker, add_keys, add_operator

ACTIONS = ("erase", "restrict", "object", "lift", "export")


def add_common(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    add_operator(p, "asks")
    add_keys(p)
    p.add_argument("--json", action="store_true", help="print the confirmation as JSON")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="subject_action", metavar="{" + ",".join(ACTIONS) + "}", required=True)
    for action in ACTIONS:
        a = sub.add_parser(action, help=action)
        a.add_argument("--tenant", required=True)
        who = a.add_mutually_exclusive_group(required=True)
        who.add_argument("--imei", help="the device's IMEI (15 digits)")
        who.add_argument("--driver", metavar="HEX", help="the driver's id as hex (iButton/RFID: up to 8 bytes)")
        add_common(a)
        if action == "erase":
            a.add_argument("--forever", action="store_true",
                           help="keep suppressing the subject after the retention window (default: expire with it)")
        if action == "lift":
            a.add_argument("--restriction", action="store_true", help="lift only the restriction")
            a.add_argument("--objection", action="store_true", help="lift only the objection")
        if action == "export":
            a.add_argument("--out", metavar="FILE", help="write the JSON lines here instead of stdout")


def _print(confirmation: dict, as_json: bool, stream=None) -> None:
    stream = stream or sys.stdout
    if as_json:
        print(json.dumps(confirmation, sort_keys=True), file=stream)
        return
    c = confirmation
    line = f"{c['action']} {c['outcome']} at {c['at']}: tenant {c['tenant']}, {c['kind']} {c['subject']}"
    if "routes" in c:
        r = c["routes"]
        line += f"; processor route {'open' if r['processor'] else 'closed'}, controller route {'open' if r['controller'] else 'closed'}"
    if c.get("expires_at"):
        line += f"; suppressed until {c['expires_at']}"
    if "records" in c:
        line += f"; {c['records']} record(s) exported from {c['topic']}"
    print(line + f" (request {c['request_id']})", file=stream)
    for t in c.get("tombstoned") or ():
        print(f"  tombstoned {t}", file=stream)
    for n in c.get("notes") or ():
        print(f"  note: {n}", file=stream)
    if c.get("error"):
        print(f"  error: {c['error']}", file=stream)


async def _run(args) -> int:
    from fleetcloak.anonymize.keystore import KeyStoreError
    from fleetcloak.streams.audit import AuditLog
    from fleetcloak.streams.rights import RightsError, open_keys, subject_export, subject_request

    kind, raw = ("device", args.imei) if args.imei else ("driver", args.driver)
    try:
        keys = await open_keys(args.broker, keystore_file=args.keystore, master_key_file=args.master_key_file)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    async with AuditLog(args.broker, operator=args.operator) as audit:
        try:
            if args.subject_action == "export":
                out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
                try:
                    conf = await subject_export(args.broker, tenant=args.tenant, kind=kind, raw_id=raw, keys=keys,
                                                audit=audit, write=lambda line: print(line, file=out))
                finally:
                    if args.out:
                        out.close()
                _print(conf, args.json, sys.stderr if not args.out else sys.stdout)
                return 0
            lift = ("restriction", "objection")
            if args.subject_action == "lift" and (args.restriction or args.objection):
                lift = tuple(n for n, on in (("restriction", args.restriction), ("objection", args.objection)) if on)
            conf = await subject_request(args.broker, args.subject_action, tenant=args.tenant, kind=kind, raw_id=raw,
                                         keys=keys, audit=audit, lift=lift, forever=getattr(args, "forever", False))
        except (RightsError, KeyStoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    _print(conf, args.json)
    return 0 if conf["outcome"] == "ok" else 2


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))

"""`fleetcloak audit verify|show --broker HOST:PORT`: check and print the audit trail.

verify exits 0 when the chain is intact, 2 with the first broken seq and why. It prints
the head (seq and hash): keep it somewhere else (a ticket, a signed note) and pass it
back with `--expect-head` to also detect a truncated tail.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone

from fleetcloak.streams.cli_args import add_broker


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_command", metavar="{verify,show}", required=True)
    v = sub.add_parser("verify", help="check the hash chain (exit 0 intact, 2 broken)")
    add_broker(v)
    v.add_argument("--expect-head", metavar="HASH", help="a head hash recorded earlier: it must still be in the chain")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.add_argument("--topic", default="fleetcloak.audit", help=argparse.SUPPRESS)
    s = sub.add_parser("show", help="print the trail")
    add_broker(s)
    s.add_argument("--since", help="only events at or after this time (ISO 8601, UTC if no zone) or epoch ms")
    s.add_argument("--action", help="only this action, or a prefix ending in '.' (e.g. subject.)")
    s.add_argument("--tenant", help="only events about this tenant")
    s.add_argument("--json", action="store_true", help="one JSON event per line")
    s.add_argument("--topic", default="fleetcloak.audit", help=argparse.SUPPRESS)


def parse_since(text: str | None) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run(args: argparse.Namespace) -> int:
    from fleetcloak.streams.audit import read_audit, verify

    records = asyncio.run(read_audit(args.broker, args.topic))
    if args.audit_command == "verify":
        events = [e for _, e in records]
        res = verify(events)
        if res.ok and args.expect_head and not any(isinstance(e, dict) and e.get("hash") == args.expect_head for e in events):
            res.ok, res.reason = False, "truncated: the expected head is no longer in the chain"
        out = res.to_dict()
        if res.broken_index is not None and res.broken_index < len(records):
            out["broken_offset"] = records[res.broken_index][0]
        if args.json:
            print(json.dumps(out, sort_keys=True))
        elif res.ok:
            print(f"audit chain OK: {res.count} events, head seq {res.head_seq} hash {res.head_hash}")
            if res.forks:
                print(f"  {len(res.forks)} concurrent-append fork(s) at seq {res.forks}, merged by later events")
            if res.open_tips:
                print(f"  open tips at seq {res.open_tips} (a recent concurrent append; the next append merges them)")
            if res.duplicates:
                print(f"  {len(res.duplicates)} duplicate deliveries skipped (seq {res.duplicates})")
        else:
            where = f"seq {res.broken_seq}" + (f" (offset {out.get('broken_offset')})" if "broken_offset" in out else "")
            print(f"audit chain BROKEN at {where}: {res.reason}", file=sys.stderr)
        return 0 if res.ok else 2

    since = parse_since(args.since)
    for offset, e in records:
        if not isinstance(e, dict):
            if not args.json:
                print(f"#{offset} (not an audit event)")
            continue
        if since is not None and e.get("ts_ms", 0) < since:
            continue
        if args.action:
            a = e.get("action", "")
            if not (a == args.action or (args.action.endswith(".") and a.startswith(args.action))):
                continue
        if args.tenant and e.get("tenant") != args.tenant:
            continue
        if args.json:
            print(json.dumps(e, sort_keys=True, separators=(",", ":")))
        else:
            details = json.dumps(e.get("details") or {}, sort_keys=True, separators=(",", ":"))
            print(f"{e.get('seq'):>5} {_iso(e.get('ts_ms', 0))} {e.get('action')} {e.get('outcome')} "
                  f"by {e.get('operator')} ({e.get('operator_source')}) tenant={e.get('tenant') or '-'} "
                  f"subject={e.get('subject') or '-'} {details}")
    return 0

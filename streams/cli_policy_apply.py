"""`fleetcloak policy apply FILE... --broker HOST:PORT`: validate, then publish.

1. Every file is validated, and so is the set they make with the policies already on
   `fleetcloak.policies` (a file replaces the policy of its tenant): a device owned by
   two tenants is refused even when the other tenant was applied last week.
2. The keys every worker will need are minted here, once (each tenant's epochs over
   its retention window up to the next one, its subjects secret, the service's epochs:
   Keyring.prepare), so that workers sharing the keys topic never race to create the
   same root secret, even for a device's backlog.
3. The policies are published (key = tenant id, or "service"; value = the validated
   policy as JSON), and workers rebuild their pipeline within seconds.
4. One audit event per policy changed and per key epoch minted.

Exit 0 when published, 2 when a policy is refused (nothing is published then).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys

from fleetcloak.streams.cli_args import add_broker, add_keys, add_operator

SERVICE_KEY = b"service"


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="tenant and service policy files (YAML or JSON)")
    add_broker(p)
    add_keys(p)
    add_operator(p, "applies")
    p.add_argument("--json", action="store_true", help="print the confirmation as JSON")


def policy_key(policy) -> bytes:
    tenant = getattr(policy, "tenant", None)
    return tenant.encode() if tenant else SERVICE_KEY


def policy_value(policy) -> bytes:
    from fleetcloak.anonymize.policy import dump_policy

    return json.dumps(dump_policy(policy), sort_keys=True, separators=(",", ":")).encode()


def merged_set(new: list, current: dict[bytes, bytes], new_sources: list[str] | None = None):
    """The PolicySet the topic will hold once `new` is published (raises PolicyError)."""
    from fleetcloak.anonymize.policy import PolicySet
    from fleetcloak.streams.rights import parse_policy_value

    replaced = {policy_key(p) for p in new}
    kept, sources = [], []
    for key, value in sorted(current.items()):
        if key in replaced:
            continue
        try:
            kept.append(parse_policy_value(key, value))
            sources.append(f"{key.decode(errors='replace')} (on the broker)")
        except Exception:
            continue  # an unreadable policy on the topic is replaced or ignored, never trusted
    return PolicySet(kept + list(new), sources + (new_sources or [f"<file {i}>" for i in range(len(new))]))


async def apply(bootstrap: str, files: list[str], *, keystore_file=None, master_key_file=None,
                operator=None) -> dict:
    from fleetcloak.anonymize.policy import PolicySet
    from fleetcloak.streams.audit import AuditLog
    from fleetcloak.streams.control import publish_to, read_tables
    from fleetcloak.streams.rights import ensure_control_topics, open_keys
    from fleetcloak.streams.topics import POLICIES

    from fleetcloak.anonymize.policy import load_policy_file

    PolicySet.from_files(files)  # per-file and cross-file errors, all at once
    new = [load_policy_file(f) for f in files]
    await ensure_control_topics(bootstrap)
    current = (await read_tables(bootstrap, [POLICIES]))[POLICIES]
    pset = merged_set(new, current, list(files))
    keys = await open_keys(bootstrap, keystore_file=keystore_file, master_key_file=master_key_file)
    before = {(e.scope, e.epoch) for e in keys.keyring.epochs() if e.state == "active"}
    keys.keyring.prepare(pset)
    minted = sorted({(e.scope, e.epoch) for e in keys.keyring.epochs() if e.state == "active"} - before)
    await keys.flush(bootstrap)  # keys first: a worker must find them when the policy lands
    changed = []
    items = []
    for p in new:
        key, value = policy_key(p), policy_value(p)
        if current.get(key) != value:
            changed.append(key.decode())
            items.append((key, value))
    if items:
        await publish_to(bootstrap, POLICIES, items)
    async with AuditLog(bootstrap, operator=operator) as audit:
        for key, value in items:
            tenant = None if key == SERVICE_KEY else key.decode()
            await audit.append("policy.apply", tenant=tenant,
                               details={"policy_sha256": hashlib.sha256(value).hexdigest()})
        for scope, epoch in minted:
            await audit.append("key.create", tenant=None if scope == "service" else scope,
                               details={"scope": scope, "epoch": epoch})
    return {"published": changed, "unchanged": sorted(set(policy_key(p).decode() for p in new) - set(changed)),
            "keys_minted": [f"{s}/{e}" for s, e in minted], "tenants_on_broker": sorted(pset.tenants)}


def run(args) -> int:
    from fleetcloak.anonymize.keystore import KeyStoreError
    from fleetcloak.anonymize.policy import PolicyError

    try:
        out = asyncio.run(apply(args.broker, args.files, keystore_file=args.keystore,
                                master_key_file=args.master_key_file, operator=args.operator))
    except PolicyError as exc:
        for line in exc.messages:
            print(line, file=sys.stderr)
        print("policy apply: refused, nothing published", file=sys.stderr)
        return 2
    except KeyStoreError as exc:
        print(f"policy apply: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"published {len(out['published'])} polic{'y' if len(out['published']) == 1 else 'ies'}"
              f" ({', '.join(out['published']) or 'none changed'}); "
              f"{len(out['keys_minted'])} key epoch(s) minted; "
              f"{len(out['tenants_on_broker'])} tenant(s) on the broker")
    return 0

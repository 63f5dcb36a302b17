"""`fleetcloak pseudonym --tenant T (--imei X | --driver HEX | --driver-card TEXT)`

Authorised re-identification for a tenant: prints the pseudonym that tenant sees on its
processor route for one of its own identifiers, so it can join our output to its own
records. It computes forwards only (there is no reverse function) and never creates a
key: if the epoch's key does not exist yet, or was destroyed, it says so (exit 1).

The epoch is the one of `--at` (an ISO date or date-time, UTC; default now) under the
tenant's rotation: from `--policy FILE`, `--rotation`, or else found in the keystore
(the schedule whose epoch for that date exists).
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone

DEFAULT_KEYSTORE = os.path.join(".fleetcloak", "keys.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True, help="tenant id")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--imei", help="the device's 15-digit IMEI")
    who.add_argument("--driver", metavar="HEX", help="iButton/RFID id as hex (up to 16 digits = its 8 bytes)")
    who.add_argument("--driver-card", metavar="TEXT", help="tachograph driver card number as printed")
    parser.add_argument("--at", help="ISO date or date-time (UTC unless it has an offset); default now")
    parser.add_argument("--keystore", default=os.environ.get("FLEETCLOAK_KEYSTORE", DEFAULT_KEYSTORE),
                        help="key file (default $FLEETCLOAK_KEYSTORE or %(default)s)")
    parser.add_argument("--master-key-file", help="file with the base64 master key (default $FLEETCLOAK_MASTER_KEY)")
    parser.add_argument("--policy", metavar="FILE", help="the tenant's policy file (for its rotation)")
    parser.add_argument("--rotation", choices=("daily", "weekly", "monthly", "yearly", "never"))


def _parse_at(text: str | None) -> datetime:
    if not text:
        return datetime.now(timezone.utc)
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _canonical(args) -> tuple[str, bytes]:
    from .canonical import canonical_imei
    from .policy import validate_imei

    if args.imei is not None:
        return "device", canonical_imei(validate_imei(args.imei))
    if args.driver is not None:
        h = args.driver.strip().lower().removeprefix("0x")
        raw = bytes.fromhex(h.rjust(len(h) + len(h) % 2, "0"))
        if not any(raw):
            raise ValueError("a zero iButton is 'no key present', not a driver")
        return "driver", raw.rjust(8, b"\0") if len(raw) <= 8 else raw
    text = args.driver_card.replace(" ", "").replace("\0", "").upper()
    if not text:
        raise ValueError("empty driver card number")
    return "driver", text.encode("ascii")


def run(args: argparse.Namespace) -> int:
    from .epochs import ROTATIONS, epoch_of_datetime
    from .keys import EpochDestroyed, EpochMissing, Keyring
    from .keystore import FileKeyStore, KeyStoreError, load_master_key
    from .policy import PolicyError, load_policy_file
    from .pseudonyms import Pseudonymizer

    try:
        kind, canon = _canonical(args)
        when = _parse_at(args.at)
    except ValueError as exc:
        print(f"fleetcloak pseudonym: {exc}", file=sys.stderr)
        return 2
    rotation = args.rotation
    if args.policy:
        try:
            pol = load_policy_file(args.policy)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        if getattr(pol, "tenant", None) != args.tenant:
            print(f"fleetcloak pseudonym: {args.policy} is not tenant {args.tenant!r}'s policy", file=sys.stderr)
            return 2
        rotation = rotation or pol.pseudonym_rotation
    try:
        master = load_master_key("production", key_file=args.master_key_file)
        keyring = Keyring(FileKeyStore(args.keystore), master, create=False)
        if rotation is None:
            found = [r for r in ROTATIONS if keyring.has_epoch(args.tenant, epoch_of_datetime(when, r))
                     or any(e.epoch == epoch_of_datetime(when, r) for e in keyring.epochs(args.tenant))]
            # every tenant has a "static" root (its subjects secret): a periodic
            # epoch that exists for the date wins; "never" only when it is all there is
            periodic = [r for r in found if r != "never"]
            found = periodic or found
            if len(found) != 1:
                print(f"fleetcloak pseudonym: cannot tell tenant {args.tenant!r}'s rotation from the keystore "
                      f"({'no' if not found else 'several'} matching epochs); pass --policy or --rotation", file=sys.stderr)
                return 1
            rotation = found[0]
        epoch = epoch_of_datetime(when, rotation)
        p = Pseudonymizer(keyring, tenant=args.tenant, route="processor", rotation=rotation)
        print(p.pseudonym(kind, canon, epoch))
        return 0
    except EpochMissing as exc:
        print(f"fleetcloak pseudonym: {exc} in {args.keystore} (the worker creates it when it "
              "first processes a record of that period)", file=sys.stderr)
        return 1
    except (EpochDestroyed, KeyStoreError) as exc:
        print(f"fleetcloak pseudonym: {exc}", file=sys.stderr)
        return 1

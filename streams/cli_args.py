"""Arguments the broker-facing commands share, declared once so they read the same
everywhere: --broker (env FLEETCLOAK_BROKER), the keystore and master key, the operator."""
from __future__ import annotations

import os


def add_broker(p) -> None:
    p.add_argument("--broker", default=os.environ.get("FLEETCLOAK_BROKER"),
                   required="FLEETCLOAK_BROKER" not in os.environ,
                   help="bootstrap HOST:PORT (env FLEETCLOAK_BROKER)")


def add_keys(p) -> None:
    p.add_argument("--keystore", metavar="FILE", help="a file keystore (default: the fleetcloak.keys topic)")
    p.add_argument("--master-key-file", metavar="FILE",
                   help="the master key (default: $FLEETCLOAK_MASTER_KEY_FILE / $FLEETCLOAK_MASTER_KEY)")


def add_operator(p, what: str = "runs this") -> None:
    p.add_argument("--operator", help=f"who {what} (default: $FLEETCLOAK_OPERATOR, else the OS user); "
                                      "recorded in the audit trail")

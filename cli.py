"""The `fleetcloak` command: a thin dispatcher.

Each subcommand lives beside the code it drives and is imported only when it runs, so
`fleetcloak decode` never pays for Faust or numpy.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Each module exposes `add_arguments(parser)` and
# `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("fleetcloak.codecs.cli", "decode Teltonika packets (hex) to JSON lines"),
    "policy": ("fleetcloak.anonymize.cli_policy", "validate tenant and service policy files"),
    "pseudonym": ("fleetcloak.anonymize.cli_pseudonym", "print the pseudonym a tenant sees for its own IMEI or driver id"),
    "simulate": ("fleetcloak.simulator.cli", "simulate a fleet's Teltonika traffic into a sink, with ground truth"),
    "broker": ("fleetcloak.streams.cmd_broker", "run the embedded Kafka-compatible broker (Tansu) until stopped"),
    "topics": ("fleetcloak.streams.cmd_topics", "create or describe the fleetcloak topics with their settings"),
    "demo": ("fleetcloak.streams.cmd_demo", "run the whole product once: broker, simulated fleet, policies, worker, summary"),
    "worker": ("fleetcloak.streams.cmd_worker", "run the stream worker (batched, at-least-once)"),
    "audit": ("fleetcloak.streams.cli_audit", "verify or show the hash-chained audit trail"),
    "retention": ("fleetcloak.streams.cli_retention", "audit topic retention against the cap, --fix it"),
    "subject": ("fleetcloak.streams.cli_subject", "data-subject rights: erase, restrict, object, lift, export"),
    "tenant": ("fleetcloak.streams.cli_tenant", "tenant offboarding: destroy keys, delete topics"),
}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fleetcloak", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:  # import only the module that will run
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fleetcloak policy validate FILE...`: check tenant and service policy files.

Exit 0 when every file is valid (one "OK" line per file), 2 with one line per problem
("file: field.path: what is wrong") otherwise. Cross-file rules (a device owned by two
tenants, a tenant defined twice) are checked across all the files given.

Other sub-verbs (e.g. `policy apply`, which publishes to the broker) live beside the
code they drive: a module `fleetcloak.streams.cli_policy_apply` exposing
add_arguments(parser) and run(args), when present, becomes `policy apply`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_EXTRA_VERBS = {"apply": ("fleetcloak.streams.cli_policy_apply", "validate, then publish policies to the broker")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    v = sub.add_parser("validate", help="validate tenant/service policy files (YAML or JSON)")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    v.set_defaults(_verb=_validate)
    for verb, (module_name, help_text) in _EXTRA_VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        p = sub.add_parser(verb, help=help_text)
        module.add_arguments(p)
        p.set_defaults(_verb=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._verb(args) or 0)


def _validate(args: argparse.Namespace) -> int:
    from .policy import PolicyError, PolicySet, load_policy_file
    from .service_policy import ServicePolicy

    loaded, problems = [], []
    for path in args.files:
        try:
            loaded.append((path, load_policy_file(path)))
        except PolicyError as exc:
            problems.extend(f"{path}: {m}" for m in exc.messages)
    if loaded:
        try:
            PolicySet([p for _, p in loaded], [s for s, _ in loaded])
        except PolicyError as exc:
            problems.extend(exc.messages)
    bad_files = {line.split(": ", 1)[0] for line in problems}
    if not args.quiet:
        for path, pol in loaded:
            if path in bad_files:
                continue
            if isinstance(pol, ServicePolicy):
                what = f"service policy {pol.service!r}"
            else:
                nd, nz = len(pol.devices), len(pol.processor.privacy_zones)
                what = (f"tenant {pol.tenant!r}, {nd} device{'s' * (nd != 1)}, "
                        f"{nz} privacy zone{'s' * (nz != 1)}")
            print(f"{path}: OK ({what})")
    for line in problems:
        print(line, file=sys.stderr)
    return 2 if problems else 0

"""anonymize/ stays pure: no Kafka, Faust or aiokafka, directly or through an import."""
from __future__ import annotations

import ast
import subprocess
import sys

FORBIDDEN = ("kafka", "faust", "aiokafka", "confluent_kafka")


def test_no_kafka_imports_in_source(repo):
    offenders = []
    files = sorted((repo / "anonymize").glob("*.py"))
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for n in names:
                if n.split(".")[0] in FORBIDDEN or "streams" in n.split("."):
                    offenders.append(f"{path.name}: {n}")
    assert not offenders, offenders


def test_importing_every_module_loads_no_kafka():
    code = (
        "import importlib, pkgutil, sys\n"
        "import fleetcloak.anonymize as a\n"
        "for m in pkgutil.iter_modules(a.__path__):\n"
        "    importlib.import_module('fleetcloak.anonymize.' + m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m.startswith('fleetcloak.streams')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

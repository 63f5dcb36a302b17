"""`fleetcloak demo` (what `make demo` runs), small, as a user would run it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


def test_demo_runs_balances_and_cleans_up(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fleetcloak.cli", "demo", "--vehicles", "8", "--days", "1",
                        "--json", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["records"]["balanced"]
    assert sum(out["records"]["forwarded"].values()) == out["truth"]["valid"]
    assert out["sample_processor_record"]["record_id"]
    assert out["audit"] and "OK" in out["audit"][0]
    # nothing left running: the broker it started no longer listens
    host, port = out["broker"].rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()

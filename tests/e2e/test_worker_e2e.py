"""simulator -> telematics.raw -> `fleetcloak worker` -> outputs, on a real broker,
held against the simulator's ground truth. Each test has a broker of its own: the
pipeline's topic names are fixed, so tests must not share one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fleetcloak.anonymize.keystore import MasterKey
from fleetcloak.streams.broker import EmbeddedBroker, free_port
from fleetcloak.streams.topicio import read_all

pytestmark = pytest.mark.broker


class Fleet:
    def __init__(self, tmp: Path, *, tenants=3, vehicles=9, days=2, seed=5, faults=0.05):
        self.tmp = tmp
        self.broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
        self.env = {**os.environ, "FLEETCLOAK_MASTER_KEY": MasterKey.new_base64(), "PYTHONUNBUFFERED": "1",
                    "FLEETCLOAK_OPERATOR": "e2e-test"}
        self.cli("simulate", "--tenants", str(tenants), "--vehicles", str(vehicles), "--days", str(days),
                 "--start", "monday",
                 "--seed", str(seed), "--faults", str(faults), "--sink", f"kafka://{self.broker.bootstrap}",
                 "--truth", str(tmp / "truth.json"), "--write-policies", str(tmp / "policies"), "--quiet")
        self.truth = json.loads((tmp / "truth.json").read_text())
        self.cli("policy", "apply", *map(str, sorted((tmp / "policies").glob("*.yaml"))),
                 "--broker", self.broker.bootstrap)

    def cli(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "fleetcloak.cli", *args], env=self.env, capture_output=True,
                           text=True, timeout=240)
        assert r.returncode == 0, f"fleetcloak {' '.join(args[:2])} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def worker(self, *args: str, log: str = "worker.log") -> subprocess.Popen:
        cmd = [sys.executable, "-m", "fleetcloak.cli", "worker", "--broker", self.broker.bootstrap,
               "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1", "-l", "info", *args]
        return subprocess.Popen(cmd, env=self.env, stdout=open(self.tmp / log, "ab"), stderr=subprocess.STDOUT)

    def log(self, name: str = "worker.log") -> str:
        return (self.tmp / name).read_text(errors="replace")

    def outputs(self, topic: str) -> list:
        return read_all(self.broker.bootstrap, topic)

    def tenant_records(self) -> dict[str, list[dict]]:
        out = {}
        for t in self.truth["tenants"]:
            out[t["id"]] = [json.loads(m.value) for m in self.outputs(f"tenant.{t['id']}.telemetry")]
        return out

    def close(self):
        self.broker.stop()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def _valid_per_tenant(truth) -> Counter:
    c = Counter()
    for t in truth["tenants"]:
        for d in t["devices"]:
            c[t["id"]] += truth["counts"].get(d["imei"], {}).get("valid", 0)
    return c


def test_worker_end_to_end_matches_the_truth(fleet):
    w = fleet.worker("--until-drained")
    assert w.wait(180) == 0, fleet.log()[-3000:]
    log = fleet.log()
    assert "balanced" in log and "IMBALANCED" not in log
    expected = _valid_per_tenant(fleet.truth)
    got = fleet.tenant_records()
    for tenant, n in expected.items():
        ids = [r["record_id"] for r in got[tenant]]
        assert len(set(ids)) == n, tenant          # every valid record arrived ...
        assert len(ids) == n, tenant               # ... exactly once on a clean run
    # no raw IMEI anywhere in the analytics topic; keys never carry one
    imeis = {d["imei"].encode() for t in fleet.truth["tenants"] for d in t["devices"]}
    for m in fleet.outputs("analytics.telemetry"):
        assert not any(i in m.value or i in (m.key or b"") for i in imeis)
    dead = fleet.outputs("telematics.deadletter")
    reasons = Counter(dict(m.headers)["deadletter.reason"].decode() for m in dead)
    unknown_msgs = sum(c.get("phantom", 0) for c in fleet.truth["messages"].values())
    assert reasons["unknown_device"] == unknown_msgs
    # the audit trail holds the policy changes and the keys minted for them
    trail = fleet.cli("audit", "show", "--broker", fleet.broker.bootstrap)
    assert "policy.apply" in trail
    assert "retention.drop" in trail  # the too-old and future records, audited in aggregate
    fleet.cli("audit", "verify", "--broker", fleet.broker.bootstrap)


def test_worker_refuses_a_telemetry_topic_kept_longer_than_the_window(tmp_path):
    from fleetcloak.streams.topicio import create_topic

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        create_topic(broker.bootstrap, "tenant.acme.telemetry", 1, {"retention.ms": str(400 * 86_400_000)})
        env = {**os.environ, "FLEETCLOAK_MASTER_KEY": MasterKey.new_base64()}
        r = subprocess.run([sys.executable, "-m", "fleetcloak.cli", "worker", "--broker", broker.bootstrap,
                            "--until-drained", "--metrics-port", str(free_port()), "-l", "info"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        out = r.stdout + r.stderr
        assert "tenant.acme.telemetry" in out and "365" in out, out[-2000:]


def test_sigkill_mid_stream_then_restart_loses_nothing(fleet):
    w = fleet.worker("--max-records", "200", log="first.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let it commit some batches, then kill it hard
        if fleet.log("first.log").count("partitions assigned") and any(
                fleet.outputs(f"tenant.{t['id']}.telemetry") for t in fleet.truth["tenants"]):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the first worker produced nothing within 60 s:\n" + fleet.log("first.log")[-2000:])
    assert w.poll() is None, "the first worker must still be running when it is killed"
    w.send_signal(signal.SIGKILL)
    w.wait(10)
    w2 = fleet.worker("--until-drained", log="second.log")
    assert w2.wait(180) == 0, fleet.log("second.log")[-3000:]
    expected = _valid_per_tenant(fleet.truth)
    got = fleet.tenant_records()
    duplicates = 0
    for tenant, n in expected.items():
        ids = [r["record_id"] for r in got[tenant]]
        assert len(set(ids)) == n, tenant  # at least once
        duplicates += len(ids) - len(set(ids))
    print(f"records delivered twice after SIGKILL: {duplicates}")

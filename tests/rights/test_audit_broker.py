"""The audit trail on the real (embedded) broker."""
import asyncio
import json
import uuid

import pytest

from fleetcloak.cli import main as cli
from fleetcloak.streams.audit import AuditLog, read_audit, verify

pytestmark = pytest.mark.broker


def test_appends_chain_and_verify_via_cli(broker, capsys, monkeypatch):
    monkeypatch.setenv("FLEETCLOAK_OPERATOR", "dpo@example.test")

    async def go():
        async with AuditLog(broker) as log:
            for i in range(3):
                await log.append("policy.apply", tenant="acme", details={"i": i})
        async with AuditLog(broker, operator="second-cli") as log:  # a second CLI run
            await log.append("key.rotate", tenant="acme", details={"epoch": "2026m11"})

    asyncio.run(go())
    capsys.readouterr()
    assert cli(["audit", "verify", "--broker", broker, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["count"] >= 4
    assert cli(["audit", "show", "--broker", broker, "--json", "--action", "key."]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown[-1]["operator"] == "second-cli" and shown[-1]["operator_source"] == "cli"
    assert cli(["audit", "show", "--broker", broker, "--json", "--action", "policy.apply"]) == 0
    applied = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert applied[-1]["operator"] == "dpo@example.test" and applied[-1]["operator_source"] == "env"


def test_concurrent_writers_stay_verifiable_and_tampering_is_caught(broker):
    topic = f"test.audit.{uuid.uuid4().hex[:8]}"

    async def go():
        a, b = AuditLog(broker, topic=topic), AuditLog(broker, topic=topic)
        await a.start(), await b.start()
        try:
            for i in range(4):  # two writers racing on the same head
                await asyncio.gather(a.append("race.a", details={"i": i}), b.append("race.b", details={"i": i}))
            await a.append("after.race")
        finally:
            await a.stop(), await b.stop()
        return await read_audit(broker, topic)

    records = asyncio.run(go())
    events = [e for _, e in records]
    assert len(events) == 9
    res = verify(events)
    assert res.ok, res.reason
    # whatever forks the race produced were merged by later appends
    assert res.open_tips == []
    print("forks at seq", res.forks)
    # a removed event is detected on what the broker returned
    for victim in range(1, 8):
        broken = verify(events[:victim] + events[victim + 1:])
        assert not broken.ok, victim
    altered = [dict(e) for e in events]
    altered[3]["outcome"] = "failed"
    assert not verify(altered).ok


def test_verify_cli_reports_the_first_broken_seq_and_a_truncated_head(broker, capsys):
    """A trail with one event removed (as a broker-side rewrite would leave it): exit 2."""
    from fleetcloak.streams.topicio import aproduce

    good, bad = f"test.audit.{uuid.uuid4().hex[:8]}", f"test.audit.{uuid.uuid4().hex[:8]}"

    async def go():
        async with AuditLog(broker, topic=good, operator="ops") as log:
            for i in range(5):
                await log.append("policy.apply", tenant="acme", details={"i": i})
        events = [e for _, e in await read_audit(broker, good)]
        tampered = events[:2] + events[3:]  # seq 2 removed
        await aproduce(broker, bad, [(None, json.dumps(e).encode()) for e in tampered], partition=0)
        return events

    events = asyncio.run(go())
    capsys.readouterr()
    assert cli(["audit", "verify", "--broker", broker, "--topic", good]) == 0
    assert events[-1]["hash"] in capsys.readouterr().out
    assert cli(["audit", "verify", "--broker", broker, "--topic", bad, "--json"]) == 2
    res = json.loads(capsys.readouterr().out)
    assert res["broken_seq"] == 3 and res["broken_offset"] == 2 and "removed" in res["reason"]
    # truncation of the newest event is only visible against a recorded head
    assert cli(["audit", "verify", "--broker", broker, "--topic", good, "--expect-head", "f" * 64]) == 2
    assert "truncated" in capsys.readouterr().err
    assert cli(["audit", "show", "--broker", broker, "--topic", good, "--since", "2000-01-01T00:00:00Z"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5

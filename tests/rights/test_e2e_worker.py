"""End to end with the real pipeline and delivery loop on the broker: the retention gate
drops a backlog older than 12 months; erase, object, restrict and lift act on a running
worker within seconds; export returns exactly what the worker wrote for the subject."""
import asyncio
import json
import os
import time

import pytest

from fleetcloak.cli import main as cli

pytestmark = pytest.mark.broker

DAY = 86_400_000


@pytest.fixture()
def master_env(monkeypatch):
    from fleetcloak.anonymize.keystore import MasterKey

    monkeypatch.setenv("FLEETCLOAK_MASTER_KEY", MasterKey.new_base64())
    monkeypatch.setenv("FLEETCLOAK_OPERATOR", "e2e@test")
    monkeypatch.delenv("FLEETCLOAK_KEYSTORE", raising=False)


def imei(n: int) -> str:
    from fleetcloak.anonymize.policy import luhn_check_digit

    body = f"35999977{n:06d}"
    return body + str(luhn_check_digit(body))


def frame(ts_ms: int, i: int) -> bytes:
    from fleetcloak.codecs.packets import AvlPacket, AvlRecord
    from fleetcloak.codecs.teltonika import encode

    rec = AvlRecord(timestamp_ms=ts_ms, priority=0, lon=13.4 + i * 1e-4, lat=52.5, altitude=30, angle=90,
                    satellites=8, speed=40, event_io_id=0, io={239: 1, 240: 1})
    return encode(AvlPacket(codec=8, records=(rec,)), "tcp")


def test_worker_applies_retention_and_rights_end_to_end(broker, master_env, tmp_path):
    from fleetcloak.anonymize.keys import Keyring, SubjectErased
    from fleetcloak.anonymize.keystore import load_master_key
    from fleetcloak.anonymize.pseudonyms import Pseudonymizer
    from fleetcloak.streams.control import ControlPlane, publish_to
    from fleetcloak.streams.loop import BatchLoop, LoopSettings
    from fleetcloak.streams.pipeline import PipelineBuilder
    from fleetcloak.streams.rights import TopicKeyStore
    from fleetcloak.streams.topicio import acreate_topic, aproduce, aread_all, unique_name

    t = "rights-e2e"
    d1, d2, sentinel = imei(50), imei(51), imei(52)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"tenant": t, "retention_days": 365, "devices": [d1, d2, sentinel]}))
    assert cli(["policy", "apply", str(policy), "--broker", broker]) == 0
    raw = unique_name("raw")
    topic = f"tenant.{t}.telemetry"
    now = int(time.time() * 1000)
    n_sent = {"sentinel": 0, "analytics": 0}

    def keyring():
        return Keyring(asyncio.run(TopicKeyStore.load(broker)), load_master_key(), create=False)

    async def scenario():
        await acreate_topic(broker, raw, 1)
        control = ControlPlane(broker)
        await control.start()
        loop = BatchLoop(LoopSettings(broker, input_topic=raw, group_id=unique_name("grp")),
                         PipelineBuilder(load_master_key()), control=control)
        task = asyncio.create_task(loop.run())
        seq = iter(range(10_000))

        async def send(items, analytics_expected):
            """Produce (imei, ts) records and a sentinel record; wait until the sentinel is in
            the tenant topic and the tenant's analytics count grew by `analytics_expected`
            (the batch's outputs are awaited together, so this only covers the last ms)."""
            n_sent["sentinel"] += 1
            items = list(items) + [(sentinel, now - 1000 + n_sent["sentinel"])]
            await aproduce(broker, raw, [(d.encode(), frame(ts, next(seq)), [("received_at", str(now).encode()),
                                                                            ("transport", b"tcp")])
                                         for d, ts in items])
            n_sent["analytics"] += analytics_expected
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert not task.done(), task.exception()
                out = [json.loads(r.value) for r in await aread_all(broker, topic)]
                ana = [json.loads(r.value) for r in await aread_all(broker, "analytics.telemetry")]
                ana = [r for r in ana if r.get("tenant") == t]
                stamps = {r["timestamp_ms"] for r in out}
                if all(now - 1000 + k in stamps for k in range(1, n_sent["sentinel"] + 1)) \
                        and len(ana) >= n_sent["analytics"]:
                    await asyncio.sleep(0.2)  # anything unexpected would land now
                    return out, [json.loads(r.value) for r in await aread_all(broker, "analytics.telemetry")
                                 if json.loads(r.value).get("tenant") == t]
                await asyncio.sleep(0.1)
            raise AssertionError("the sentinel never came out")

        async def request(*argv):
            code = await asyncio.to_thread(cli, ["subject", *argv, "--tenant", t, "--broker", broker, "--json"])
            assert code == 0
            # the worker's control plane has it: the next batch is processed under it
            for _ in range(200):
                if any(k.startswith(f"{t}/device/".encode()) for k in control.subjects.snapshot()) or argv[0] == "lift":
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)

        try:
            await asyncio.wait_for(loop.assigned.wait(), 30)
            # 1. a backlog 13 months old next to current records
            old = [(d1, now - 395 * DAY + i * 60_000) for i in range(3)]
            p1 = await send(old + [(d1, now - 50_000), (d1, now - 49_000), (d2, now - 48_000), (d2, now - 47_000)], 5)
            # 2. erase d1
            await request("erase", "--imei", d1)
            p2 = await send([(d1, now - 40_000), (d2, now - 39_000)], 2)
            # 3. object d2: processor route only
            await request("object", "--imei", d2)
            p3 = await send([(d2, now - 30_000)], 1)
            # 4. restrict d2: neither route
            await request("restrict", "--imei", d2)
            p4 = await send([(d2, now - 20_000)], 1)
            # 5. lift: both routes again
            await request("lift", "--imei", d2)
            p5 = await send([(d2, now - 10_000)], 2)
        finally:
            loop.request_stop()
            try:
                await asyncio.wait_for(task, 30)
            finally:
                await control.stop()
        return p1, p2, p3, p4, p5

    phases = asyncio.run(scenario())
    (out1, _), (out2, _), (out3, _), (out4, _), (out5, _) = phases
    kr = keyring()
    proc = Pseudonymizer(kr, tenant=t, route="processor")

    def stamps(out, dev):
        return sorted(r["timestamp_ms"] for r in out if r["device"] == proc.imei(dev, r["timestamp_ms"]))

    # retention: nothing older than the window reached the tenant topic
    assert all(r["timestamp_ms"] > now - 365 * DAY for r in out5)
    assert stamps(out1, d1) == [now - 50_000, now - 49_000]
    # erase: no new record of d1 in any output
    assert stamps(out5, d1) == [now - 50_000, now - 49_000]
    assert stamps(out2, d2) == [now - 48_000, now - 47_000, now - 39_000]
    with pytest.raises(SubjectErased):  # their analytics pseudonyms cannot be recomputed
        Pseudonymizer(kr, tenant=t, route="controller").imei(d1, now - 50_000)
    # object: d2 still reaches the tenant, not analytics; restrict: neither; lift: both
    assert now - 30_000 in stamps(out3, d2)
    assert now - 20_000 not in stamps(out4, d2)
    assert now - 10_000 in stamps(out5, d2)
    # analytics, phase by phase (time is bucketed there, so count per phase):
    # d2 has 2, +1, +0 (objected), +0 (restricted), +1 (lifted); d1 2 then nothing
    ctrl = Pseudonymizer(kr, tenant=t, route="controller")
    d2_ctrl = {ctrl.imei(d2, now - k) for k in (50_000, 10_000)}

    def n_d2(ana):
        return sum(1 for r in ana if r["device"] in d2_ctrl)

    assert [n_d2(ana) for _, ana in phases] == [2, 3, 3, 3, 4]
    assert [len(ana) for _, ana in phases] == [5, 7, 8, 9, 11]  # d1's two records + sentinels + d2

    # export: exactly the records of d2 the worker wrote
    out_file = tmp_path / "export.jsonl"
    assert cli(["subject", "export", "--imei", d2, "--tenant", t, "--broker", broker, "--out", str(out_file)]) == 0
    exported = sorted(json.loads(line)["record_id"] for line in out_file.read_text().splitlines())
    held = sorted(r["record_id"] for r in out5 if r["device"] == proc.imei(d2, r["timestamp_ms"]))
    assert exported == held and len(held) == 5
    assert cli(["audit", "verify", "--broker", broker]) == 0
    asyncio.run(publish_to(broker, "fleetcloak.policies", [(t.encode(), None)]))

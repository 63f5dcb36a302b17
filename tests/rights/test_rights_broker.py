"""Rights requests through the CLI on the real broker: state, keys, audit, export, offboarding."""
import asyncio
import json

import pytest

from fleetcloak.anonymize.keystore import MasterKey
from fleetcloak.anonymize.policy import luhn_check_digit
from fleetcloak.cli import main as cli

pytestmark = pytest.mark.broker


def imei(n: int) -> str:
    body = f"35999977{n:06d}"  # a range no simulator fleet uses
    return body + str(luhn_check_digit(body))


IMEI_A, IMEI_B, IMEI_C = imei(1), imei(2), imei(3)
PUBLISHED: list[str] = []  # tenants whose policies this module published (tombstoned at the end)
DRIVER = "00000000aabbccdd"


@pytest.fixture(scope="module")
def env():
    """A master key and an operator for the module's CLI runs (set by hand: module scope)."""
    import os

    old = {k: os.environ.get(k) for k in ("FLEETCLOAK_MASTER_KEY", "FLEETCLOAK_OPERATOR", "FLEETCLOAK_KEYSTORE")}
    os.environ["FLEETCLOAK_MASTER_KEY"] = MasterKey.new_base64()
    os.environ["FLEETCLOAK_OPERATOR"] = "dpo@tenant.test"
    os.environ.pop("FLEETCLOAK_KEYSTORE", None)
    yield
    # leave no policy behind: other modules' workers read the whole policies topic
    from fleetcloak.streams.control import publish_to

    if PUBLISHED and _BROKER:
        asyncio.run(publish_to(_BROKER[0], "fleetcloak.policies", [(t.encode(), None) for t in set(PUBLISHED)]))
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_BROKER: list[str] = []


def publish_policy(broker, tenant, devices, retention_days=180, **extra):
    PUBLISHED.append(tenant)
    _BROKER[:] = [broker]
    from fleetcloak.streams.control import publish_to
    from fleetcloak.streams.rights import POLICIES_TOPIC, ensure_control_topics

    doc = {"tenant": tenant, "retention_days": retention_days, "devices": list(devices), **extra}

    async def go():
        await ensure_control_topics(broker)
        await publish_to(broker, POLICIES_TOPIC, [(tenant.encode(), json.dumps(doc).encode())])

    asyncio.run(go())


def run_json(capsys, *argv):
    capsys.readouterr()
    code = cli(list(argv) + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out else None)


def fresh_state(broker):
    from fleetcloak.streams.control import read_tables
    from fleetcloak.streams.rights import SUBJECTS_TOPIC, SubjectState

    return SubjectState.from_table(asyncio.run(read_tables(broker, [SUBJECTS_TOPIC]))[SUBJECTS_TOPIC])


def fresh_keyring(broker):
    from fleetcloak.anonymize.keys import Keyring
    from fleetcloak.anonymize.keystore import load_master_key
    from fleetcloak.streams.rights import TopicKeyStore

    return Keyring(asyncio.run(TopicKeyStore.load(broker)), load_master_key(), create=False)


def test_object_restrict_lift_erase_round_trips(broker, env, capsys):
    t = "rights-a"
    publish_policy(broker, t, [IMEI_A, IMEI_B])
    b = ["--tenant", t, "--broker", broker]

    code, c = run_json(capsys, "subject", "object", "--imei", IMEI_A, *b)
    assert code == 0 and c["routes"] == {"processor": True, "controller": False}
    skey_a = c["subject"]
    assert skey_a.startswith("subj_") and IMEI_A not in json.dumps(c) and c["at"].endswith("Z")
    st = fresh_state(broker)
    assert st.status(t, "device", skey_a).processor and not st.status(t, "device", skey_a).controller

    code, c = run_json(capsys, "subject", "restrict", "--imei", IMEI_A, *b)
    assert c["routes"] == {"processor": False, "controller": False}
    st = fresh_state(broker)
    assert not st.status(t, "device", skey_a).processor

    code, c = run_json(capsys, "subject", "lift", "--imei", IMEI_A, *b)
    assert code == 0 and c["routes"] == {"processor": True, "controller": True} and c["state"] is None
    st = fresh_state(broker)
    assert st.entry(t, "device", skey_a) is None and st.status(t, "device", skey_a).controller

    # erase a driver: both routes closed, the controller salt destroyed (keys tombstone)
    keyring = fresh_keyring(broker)
    code, c = run_json(capsys, "subject", "erase", "--driver", DRIVER, *b)
    assert code == 0 and c["routes"] == {"processor": False, "controller": False}
    skey_d = c["subject"]
    assert c["tombstoned"] == [f"fleetcloak.keys:subject/{t}/{skey_d}"]
    assert c["expires_at"] and c["state"]["expires_ms"] - c["at_ms"] == 180 * 86_400_000  # the tenant's window
    st = fresh_state(broker)
    assert not st.status(t, "driver", skey_d).processor
    keyring = fresh_keyring(broker)
    assert keyring.is_erased(t, skey_d)
    from fleetcloak.anonymize.keys import SubjectErased

    with pytest.raises(SubjectErased):  # their analytics pseudonyms can't be recomputed
        keyring.subject_salt_by_key(t, skey_d)

    # an erasure cannot be lifted: refused, exit 2, and audited as refused
    capsys.readouterr()
    assert cli(["subject", "lift", "--driver", DRIVER, *b]) == 2

    # an unknown tenant is refused rather than silently recorded under the wrong key
    assert cli(["subject", "erase", "--imei", IMEI_A, "--tenant", "no-such-tenant", "--broker", broker]) == 2

    capsys.readouterr()
    assert cli(["audit", "verify", "--broker", broker]) == 0
    capsys.readouterr()
    assert cli(["audit", "show", "--broker", broker, "--json", "--tenant", t]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    actions = [(e["action"], e["outcome"]) for e in events]
    assert actions[-5:] == [("subject.object", "ok"), ("subject.restrict", "ok"), ("subject.lift", "ok"),
                            ("subject.erase", "ok"), ("subject.lift", "refused")]
    assert all(e["operator"] == "dpo@tenant.test" and e["operator_source"] == "env" for e in events)
    blob = json.dumps(events)
    assert IMEI_A not in blob and DRIVER not in blob.lower() and "aabbccdd" not in blob.lower()


def test_a_running_reader_applies_requests_within_seconds(broker, env):
    from fleetcloak.streams.control import CompactedTable, TableReader
    from fleetcloak.streams.rights import SUBJECTS_TOPIC, SubjectState

    t = "rights-live"
    dev = imei(10)
    publish_policy(broker, t, [dev])

    async def go():
        state = SubjectState()
        reader = TableReader(broker, [CompactedTable(SUBJECTS_TOPIC, state.apply)], fetch_max_wait_ms=50)
        await reader.start()
        try:
            before = state.version
            code = await asyncio.to_thread(cli, ["subject", "restrict", "--imei", dev, "--tenant", t,
                                                 "--broker", broker, "--json"])
            assert code == 0
            for _ in range(100):
                if state.version > before and state.has_entries(t):
                    break
                await asyncio.sleep(0.05)
            skeys = [k for _, k in state.subjects_of(t)]
            assert len(skeys) == 1
            proc, ctrl = state.masks(t, "device", skeys + [None])
            assert proc.tolist() == [False, True] and ctrl.tolist() == [False, True]
        finally:
            await reader.stop()

    asyncio.run(go())


def test_export_returns_exactly_the_subjects_records(broker, env, capsys, tmp_path):
    from fleetcloak.anonymize.epochs import epoch_id
    from fleetcloak.anonymize.keys import Keyring
    from fleetcloak.anonymize.keystore import load_master_key
    from fleetcloak.anonymize.pseudonyms import Pseudonymizer
    from fleetcloak.streams.control import publish_to
    from fleetcloak.streams.rights import KEYS_TOPIC, TopicKeyStore
    from fleetcloak.streams.topics import ensure_topics, tenant_topic

    t = "rights-x"
    IMEI_A, IMEI_B = imei(20), imei(21)
    publish_policy(broker, t, [IMEI_A, IMEI_B])
    now = int(__import__("time").time() * 1000)
    month = 31 * 86_400_000
    # the worker's side: keys for two epochs, records pseudonymised with them
    store = asyncio.run(TopicKeyStore.load(broker))
    keyring = Keyring(store, load_master_key(), create=True)
    p = Pseudonymizer(keyring, tenant=t, rotation="monthly")
    records, mine = [], []
    for i, ts in enumerate([now - month, now - month + 1000, now, now + 5]):
        for dev in (IMEI_A, IMEI_B):
            r = {"record_id": f"r{i}{dev[-2:]}", "tenant": t, "device": p.imei(dev, ts), "driver": None,
                 "timestamp_ms": ts, "lat": 1.0, "lon": 2.0}
            records.append(r)
            if dev == IMEI_A:
                mine.append(r)
    assert len({r["device"] for r in mine}) == 2  # two epochs, two pseudonyms of one device
    packet = {"records": [records[0], records[1]]}  # one message per packet is matched inside

    async def produce():
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        await store.flush(broker)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        await ensure_topics(admin, [tenant_topic(t, 180, partitions=2)])
        await admin.close()
        prod = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
        await prod.start()
        for r in records[2:]:
            await prod.send_and_wait(f"tenant.{t}.telemetry", json.dumps(r).encode(), key=r["device"].encode())
        await prod.send_and_wait(f"tenant.{t}.telemetry", json.dumps(packet).encode(), key=b"p")
        await prod.stop()

    asyncio.run(produce())
    out = tmp_path / "export.jsonl"
    code, c = run_json(capsys, "subject", "export", "--imei", IMEI_A, "--tenant", t, "--broker", broker, "--out", str(out))
    assert code == 0 and c["records"] == len(mine) == 4
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["record_id"] for r in got) == sorted(r["record_id"] for r in mine)
    assert set(c["epochs_searched"]) >= {epoch_id(now - month), epoch_id(now)}
    # to stdout, the summary goes to stderr
    capsys.readouterr()
    assert cli(["subject", "export", "--imei", IMEI_B, "--tenant", t, "--broker", broker]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 4 and "4 record(s) exported" in cap.err


def test_offboarding_removes_topics_keys_policy_and_subjects(broker, env, capsys):
    from fleetcloak.streams.control import read_tables
    from fleetcloak.streams.topics import ensure_topics, tenant_topic

    t = "rights-off"
    IMEI_B = imei(30)
    publish_policy(broker, t, [IMEI_B])

    async def make_topic():
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        await ensure_topics(admin, [tenant_topic(t, 30)])
        await admin.close()

    asyncio.run(make_topic())
    assert cli(["subject", "erase", "--imei", IMEI_B, "--tenant", t, "--broker", broker]) == 0
    keyring = fresh_keyring(broker)
    assert [e.epoch for e in keyring.epochs(t) if e.state == "active"]  # the subjects secret's root
    code, r = run_json(capsys, "tenant", "offboard", "--tenant", t, "--broker", broker)
    assert code == 0, r
    assert r["topics_deleted"] == [f"tenant.{t}.telemetry"] and r["topics_left"] == []
    assert r["key_epochs_destroyed"] and r["policy_tombstoned"] and r["subject_entries_tombstoned"] == 1

    async def topics():
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            return await admin.list_topics()
        finally:
            await admin.close()

    assert not [x for x in asyncio.run(topics()) if x.startswith(f"tenant.{t}.")]
    keyring = fresh_keyring(broker)
    assert not [e for e in keyring.epochs(t) if e.state == "active"]
    assert not keyring.store.names(f"root/{t}/") and not keyring.store.names(f"subject/{t}/")
    tables = asyncio.run(read_tables(broker, ["fleetcloak.policies", "fleetcloak.subjects"]))
    assert t.encode() not in tables["fleetcloak.policies"]
    left = [k for k in tables["fleetcloak.subjects"] if k.startswith(f"{t}/".encode())]
    assert left == [f"{t}/tenant/*".encode()]  # only the stop marker, which expires
    st = fresh_state(broker)
    assert st.is_offboarded(t) and not st.status(t, "device", None).processor
    capsys.readouterr()
    assert cli(["audit", "verify", "--broker", broker]) == 0


def test_retention_expire_shreds_old_epochs_and_expires_subject_entries(broker, env, capsys, tmp_path):
    """`retention expire` with a file keystore (so it cannot shred keys other test modules
    keep in this session's fleetcloak.keys topic)."""
    import time

    from fleetcloak.anonymize.epochs import epoch_id
    from fleetcloak.anonymize.keys import EpochDestroyed, Keyring
    from fleetcloak.anonymize.keystore import FileKeyStore, load_master_key
    from fleetcloak.streams.control import publish_to
    from fleetcloak.streams.rights import SUBJECTS_TOPIC, apply_request, table_key

    t = "rights-exp"
    publish_policy(broker, t, [imei(40)], retention_days=30)
    now = int(time.time() * 1000)
    day = 86_400_000
    path = tmp_path / "keys.json"
    keyring = Keyring(FileKeyStore(path), load_master_key(), create=True)
    for ago in (400, 60, 0):
        keyring.ensure_epochs(t, "monthly", now - ago * day, ahead=0)
    old_entry = apply_request(None, "erase", tenant=t, kind="device", subject="subj_old", now_ms=now - 40 * day,
                              window_days=30)
    asyncio.run(publish_to(broker, SUBJECTS_TOPIC, [(table_key(t, "device", "subj_old"), json.dumps(old_entry).encode())]))

    code, r = run_json(capsys, "retention", "expire", "--broker", broker, "--keystore", str(path))
    assert code == 0
    gone = {(d["scope"], d["epoch"]) for d in r["key_epochs_destroyed"]}
    assert gone == {(t, epoch_id(now - 400 * day)), (t, epoch_id(now - 60 * day))}  # 30-day window
    keyring = Keyring(FileKeyStore(path), load_master_key(), create=False)
    with pytest.raises(EpochDestroyed):
        keyring.root(t, epoch_id(now - 400 * day))
    keyring.root(t, epoch_id(now))  # the live epoch stays
    assert r["subject_entries_expired"] >= 1 and fresh_state(broker).entry(t, "device", "subj_old") is None
    capsys.readouterr()
    assert cli(["audit", "show", "--broker", broker, "--json", "--tenant", t]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["details"]["epoch"] for e in events if e["action"] == "key.destroy"} == {ep for _, ep in gone}
    assert any(e["action"] == "subject.expire" and e["subject"] == "subj_old" for e in events)


def test_worker_duties_shred_audit_drops_and_the_startup_guard(broker, env, capsys):
    import time

    from fleetcloak.anonymize.epochs import epoch_id
    from fleetcloak.anonymize.keys import EpochDestroyed, Keyring
    from fleetcloak.anonymize.keystore import load_master_key
    from fleetcloak.streams.retention import RetentionDuties, RetentionViolation, startup_guard
    from fleetcloak.streams.rights import TopicKeyStore
    from fleetcloak.streams.topicio import acreate_topic

    t = "rights-duty"
    publish_policy(broker, t, [imei(60)], retention_days=30)
    now = int(time.time() * 1000)
    store = asyncio.run(TopicKeyStore.load(broker))
    keyring = Keyring(store, load_master_key(), create=True)
    keyring.ensure_epochs(t, "monthly", now - 100 * 86_400_000, ahead=0)
    old = epoch_id(now - 100 * 86_400_000)
    asyncio.run(store.flush(broker))

    async def go():
        duties = RetentionDuties(broker, load_master_key(), audit_every_s=0.05)
        task = asyncio.create_task(duties.run())
        duties.drops.add({("too_old", t): 7, ("duplicate", t): 3, ("subject_blocked", t): 2})
        for _ in range(200):
            if duties.rounds:
                break
            await asyncio.sleep(0.05)
        duties.stop()
        await asyncio.wait_for(task, 30)
        # the guard: a tenant topic over the tenant's 30-day window stops a worker
        await acreate_topic(broker, f"tenant.{t}.telemetry", 1, {"retention.ms": str(90 * 86_400_000)})
        with pytest.raises(RetentionViolation, match="30 days"):
            await startup_guard(broker, [f"tenant.{t}.telemetry"])
        return duties

    duties = asyncio.run(go())
    assert any(d["epoch"] == old for d in duties.last_result["key_epochs_destroyed"])
    with pytest.raises(EpochDestroyed):
        fresh_keyring(broker).root(t, old)
    capsys.readouterr()
    assert cli(["audit", "show", "--broker", broker, "--json", "--tenant", t]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    drops = {(e["action"], e["details"]["rule"]): e["details"]["records"] for e in events if e["action"].endswith(".drop")}
    assert drops == {("retention.drop", "too_old"): 7, ("subject.drop", "subject_blocked"): 2}
    assert all(e["operator"] == "service:worker" and e["operator_source"] == "service"
               for e in events if e["action"].endswith(".drop") or e["action"] == "key.destroy")

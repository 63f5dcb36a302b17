"""The telemetry pipeline as a pure function: simulator traffic in, outputs out, held
against the simulator's ground truth. No broker: the delivery loop is tested elsewhere."""
from __future__ import annotations

import gc
import json
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from fleetcloak.anonymize import PolicySet, ZoneIndex
from fleetcloak.anonymize.keystore import MasterKey
from fleetcloak.cli import main as cli
from fleetcloak.codecs import AvlPacket, AvlRecord, encode
from fleetcloak.streams.cli_policy_apply import policy_key, policy_value
from fleetcloak.codecs.udp import header_is as udp_header_is
from fleetcloak.streams.pipeline import DuplicateWindow, PipelineBuilder, udp_header_error
from fleetcloak.streams.seam import ControlSnapshot, Counts, Message

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = {p.stem: json.loads(p.read_text()) for p in (REPO / "schemas").glob("*.json")}


def _validator(name):
    from referencing import Registry, Resource

    reg = Registry().with_resources((s["$id"].rsplit("/", 1)[1], Resource.from_contents(s)) for s in SCHEMAS.values())
    reg = reg.with_resources((s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values())
    return jsonschema.Draft202012Validator(SCHEMAS[name], registry=reg)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    rc = cli(["simulate", "--tenants", "3", "--vehicles", "9", "--days", "2", "--start", "monday", "--seed", "11",
              "--faults", "0.06",
              "--sink", f"file:{d / 'raw.jsonl'}", "--truth", str(d / "truth.json"),
              "--write-policies", str(d / "policies"), "--quiet"])
    assert rc == 0
    files = sorted((d / "policies").glob("*.yaml"))
    pset = PolicySet.from_files(files)
    policies = {policy_key(p): policy_value(p) for p in [*pset.tenants.values(), pset.service]}
    msgs = []
    for i, line in enumerate((d / "raw.jsonl").read_text().splitlines()):
        row = json.loads(line)
        msgs.append(Message(bytes.fromhex(row["frame_hex"]), row["imei"].encode(),
                            [("transport", row["transport"].encode()),
                             ("received_at", str(row["received_at"]).encode())], offset=i))
    return {"truth": json.loads((d / "truth.json").read_text()), "pset": pset, "policies": policies, "msgs": msgs}


def run(fleet, batch_size=500, builder=None):
    builder = builder or PipelineBuilder(MasterKey.generate())
    pipe = builder(ControlSnapshot(fleet["policies"], {}, {}))
    counts, outputs = Counts(), []
    for k in range(0, len(fleet["msgs"]), batch_size):
        r = pipe.process(fleet["msgs"][k:k + batch_size])
        assert r.counts.balanced(), r.counts
        counts.add(r.counts)
        outputs += r.messages()
    return counts, outputs, builder


def test_accounting_matches_the_ground_truth(fleet):
    counts, outputs, _ = run(fleet)
    totals = fleet["truth"]["totals"]
    assert counts.balanced()
    # every valid record reaches its tenant's topic, once
    assert sum(counts.forwarded.values()) == totals["valid"]
    per_tenant = Counter()
    for t in fleet["truth"]["tenants"]:
        for dev in t["devices"]:
            per_tenant[t["id"]] += fleet["truth"]["counts"].get(dev["imei"], {}).get("valid", 0)
    assert {t: n for (route, t), n in counts.forwarded.items()} == {t: n for t, n in per_tenant.items() if n}
    assert counts.deadlettered["unknown_device"] == totals["unknown_device"]
    dropped = Counter()
    for (rule, _), n in counts.dropped.items():
        dropped[rule] += n
    assert dropped["future"] == totals["future"]
    # a retransmitted copy of a too-old record is dropped as too old, before the
    # duplicate gate sees it: the two fates are counted together
    assert dropped["too_old"] + dropped["duplicate"] == totals["too_old"] + totals["duplicate"]
    corrupt_messages = sum(c.get("corrupt", 0) for c in fleet["truth"]["messages"].values())
    decode_reasons = {r: n for r, n in counts.deadlettered.items() if r != "unknown_device"}
    assert sum(decode_reasons.values()) == corrupt_messages
    topics = Counter(o[0] for o in outputs)
    assert topics["telematics.deadletter"] == corrupt_messages + sum(
        c.get("phantom", 0) for c in fleet["truth"]["messages"].values())


def test_records_kept_off_analytics_are_counted_by_rule(fleet):
    counts, outputs, _ = run(fleet)
    refusing = {t for t, p in fleet["pset"].tenants.items() if not p.analytics}
    for t in refusing:
        assert counts.skipped[("analytics_refused", t)] == counts.forwarded[("processor", t)]
    analytics = sum(1 for o in outputs if o[0] == "analytics.telemetry")
    assert analytics == sum(counts.copies.values())
    # every forwarded record is either copied to analytics or kept off it by a named rule
    assert sum(counts.forwarded.values()) == sum(counts.copies.values()) + sum(counts.skipped.values())


def test_outputs_match_their_json_schemas(fleet):
    _, outputs, _ = run(fleet)
    proc, ana = _validator("processor_record"), _validator("analytics_record")
    seen = Counter()
    for topic, key, value, headers in outputs:
        if topic.startswith("tenant."):
            proc.validate(json.loads(value))
            seen["processor"] += 1
        elif topic == "analytics.telemetry":
            ana.validate(json.loads(value))
            seen["analytics"] += 1
    assert seen["processor"] and seen["analytics"]


def _raw_ids(truth):
    imeis = {d["imei"] for t in truth["tenants"] for d in t["devices"]} | set(truth["unknown_devices"])
    drivers = {d["id"] for d in truth["drivers"]}
    return imeis, drivers


def test_no_raw_identifier_where_the_policy_pseudonymises_nor_in_analytics(fleet):
    _, outputs, _ = run(fleet)
    imeis, drivers = _raw_ids(fleet["truth"])
    needles_dev = [i.encode() for i in imeis]
    needles_drv = [d.encode() for d in drivers] + [str(int(d, 16)).encode() for d in drivers]
    for topic, key, value, headers in outputs:
        if topic == "analytics.telemetry":
            kinds = {"device", "driver"}
        elif topic.startswith("tenant."):
            kinds = set(fleet["pset"].tenants[topic.split(".")[1]].processor.pseudonymise)
        else:
            continue
        blob = b"|".join([key or b"", value] + [v for _, v in headers or ()])
        if "device" in kinds:
            assert not any(n in blob for n in needles_dev), (topic, value[:200])
        if "driver" in kinds:
            assert not any(n in blob for n in needles_drv), (topic, value[:200])


def _with_service(fleet, **update):
    svc = fleet["pset"].service.model_copy(update=update)
    return {**fleet, "policies": {**fleet["policies"], policy_key(svc): policy_value(svc)}}


def test_small_groups_lose_their_position_on_the_analytics_route(fleet):
    # nine vehicles spread over three cities never make a group of five in one cell
    _, outputs, _ = run(_with_service(fleet, min_group_size=5))
    recs = [json.loads(v) for t, _, v, _ in outputs if t == "analytics.telemetry"]
    assert recs and all(r["lat"] is None and r["cell"] is None for r in recs)
    assert Counter(r["location_suppressed"] for r in recs)["min_group_size"] > len(recs) / 2


def test_analytics_is_coarsened_outside_zones_and_absent_for_refusing_tenants(fleet):
    _, outputs, _ = run(_with_service(fleet, min_group_size=1))
    pset = fleet["pset"]
    refusing = {t for t, p in pset.tenants.items() if not p.analytics}
    assert refusing, "the simulator writes one tenant that refuses analytics"
    by_tenant = {}
    for topic, _, value, _ in outputs:
        if topic == "analytics.telemetry":
            rec = json.loads(value)
            by_tenant.setdefault(rec["tenant"], []).append(rec)
    assert not refusing & set(by_tenant)
    bucket_ms = pset.service.time_bucket_s * 1000
    for tenant, recs in by_tenant.items():
        zones = ZoneIndex.from_policy(pset.tenants[tenant].processor.privacy_zones)
        pos = [r for r in recs if r["lat"] is not None]
        assert pos
        lat = np.array([r["lat"] for r in pos])
        lon = np.array([r["lon"] for r in pos])
        assert (zones.locate(lat, lon) < 0).all()
        assert all(r["timestamp_ms"] % bucket_ms == 0 for r in recs)
        # cell centres: few distinct positions for many records
        assert len(set(zip(lat.tolist(), lon.tolist()))) < len(pos) / 2


def test_too_old_future_and_unknown_never_reach_a_tenant_topic(fleet):
    _, outputs, _ = run(fleet)
    ref = fleet["truth"]["reference"]
    unknown = {i.encode() for i in fleet["truth"]["unknown_devices"]}
    for topic, key, value, _ in outputs:
        if not topic.startswith("tenant."):
            continue
        rec = json.loads(value)
        assert ref["too_old_before_ms"] <= rec["timestamp_ms"] < ref["future_after_ms"]
        assert not any(u in value for u in unknown)


def test_duplicate_window_forwards_each_id_once_and_keeps_at_least_half_its_capacity():
    w = DuplicateWindow(capacity=8)
    a, b, c, d, e, f, g, h = (ch * 26 for ch in "abcdefgh")   # record ids: 26 base32 characters
    assert w.fresh([a, b, a, c]).tolist() == [True, True, False, True]   # a repeat inside a call
    assert w.fresh((b, d)).tolist() == [False, True]                       # across calls, any sequence
    assert w.fresh([]).tolist() == []
    # 4 ids filled the young generation (capacity/2): it became the old one, still remembered
    assert len(w) == 4 and w.fresh([a, d, e]).tolist() == [False, False, True]
    w.fresh([f, g, h])      # the young generation filled again at f: b, c are forgotten,
    assert w.fresh([e, a, b]).tolist() == [False, False, True]   # a, seen again, was kept
    assert len(w) <= 8      # at most the capacity
    w.clear()
    assert len(w) == 0 and w.fresh([e]).tolist() == [True]


def test_duplicate_window_compares_whole_ids_and_refuses_what_is_not_one():
    import random

    rng = random.Random(5)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    ids = ["".join(rng.choice(alphabet) for _ in range(26)) for _ in range(20_000)]
    w = DuplicateWindow(capacity=1_000_000)
    assert w.fresh(ids).all() and not w.fresh(ids).any()
    # ids that differ in one character only, anywhere, are different ids
    near = [i[:k] + ("b" if i[k] == "a" else "a") + i[k + 1:] for k, i in zip(range(26), ids)]
    assert w.fresh(near).all()
    # an id longer than 26 characters is known by its first 26 (130 bits of a keyed hash)
    assert not w.fresh([ids[0] + "abc"]).any()
    # Python's set agrees on a stream with repeats, across generations
    small, seen = DuplicateWindow(capacity=10**6), set()
    stream = [rng.choice(ids[:3000]) for _ in range(10_000)]
    want = []
    for rid in stream:
        want.append(rid not in seen)
        seen.add(rid)
    assert small.fresh(stream).tolist() == want
    for bad in (["A" * 26], ["a" * 25], [b"a" * 26], ["a" * 25 + "1"], ["a" * 25 + "\u00e9"], [None]):
        with pytest.raises(ValueError, match=r"ids\[0\] is not a record id"):
            w.fresh(bad)


def test_batching_does_not_change_the_outputs(fleet):
    _, a, builder = run(fleet, batch_size=97)
    builder.duplicates.clear()  # same keys, a worker that forwarded nothing yet
    _, b, _ = run(fleet, batch_size=5000, builder=builder)
    pick = lambda outs: sorted((t, v) for t, _, v, _ in outs if t.startswith("tenant."))
    assert len(pick(a)) == len(pick(b))
    ids = lambda outs: sorted(json.loads(v)["record_id"] for t, _, v, _ in outs if t.startswith("tenant."))
    assert ids(a) == ids(b)


def test_redelivered_batch_gives_the_same_record_ids_and_is_not_forwarded_twice(fleet):
    builder = PipelineBuilder(MasterKey.generate())
    pipe = builder(ControlSnapshot(fleet["policies"], {}, {}))
    first = pipe.process(fleet["msgs"][:300])
    again = pipe.process(fleet["msgs"][:300])  # at-least-once: the same batch again
    assert sum(again.counts.forwarded.values()) == 0
    dups = lambda r: sum(n for (rule, _), n in r.counts.dropped.items() if rule == "duplicate")
    assert dups(again) == sum(first.counts.forwarded.values()) + dups(first)
    # a fresh worker (empty window) forwards them again, under the same record_ids
    builder2 = PipelineBuilder(builder.master)
    builder2.keystore.sync({k: v for k, v in _keys(first.outputs)})
    fresh = builder2(ControlSnapshot(fleet["policies"], dict(_keys(first.outputs)), {})).process(fleet["msgs"][:300])
    ids = lambda r: sorted(json.loads(v)["record_id"] for t, _, v, _ in r.messages() if t.startswith("tenant."))
    assert ids(fresh) == ids(first)


def _keys(outputs):
    return [(k, v) for t, k, v, _ in outputs if t == "fleetcloak.keys"]


def test_minted_keys_leave_as_outputs_of_the_batch_that_needed_them(fleet):
    _, outputs, builder = run(fleet)
    keys = _keys(outputs)
    assert keys, "the first batch mints the roots and subject salts it needs"
    assert all(v and b"ct" in v for _, v in keys)  # wrapped, never raw
    for name, _ in keys:
        assert builder.keystore.get(name.decode()) is not None


def test_a_bad_frame_is_deadlettered_with_its_reason_and_its_original_bytes(fleet):
    builder = PipelineBuilder(MasterKey.generate())
    pipe = builder(ControlSnapshot(fleet["policies"], {}, {}))
    imei = fleet["truth"]["tenants"][0]["devices"][0]["imei"]
    good = encode(AvlPacket(8, (AvlRecord(1_700_000_000_000, 0, 13.4, 52.5, 30, 90, 9, 50, 0, {239: 1}),)))
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # CRC
    r = pipe.process([Message(bytes(bad), imei.encode()), Message(b"\x00\x00", b"not-an-imei")])
    assert r.counts.deadlettered == {"crc_mismatch": 1, "bad_key": 1}
    (t1, k1, v1, h1), (t2, k2, v2, h2) = sorted(r.outputs, key=lambda o: o[1])
    dl = {o[1]: o for o in r.outputs}
    topic, key, value, headers = dl[imei.encode()]
    assert topic == "telematics.deadletter" and value == bytes(bad)
    hd = dict(headers)
    assert hd["deadletter.reason"] == b"crc_mismatch" and int(hd["deadletter.offset"]) > 0


def test_udp_datagram_is_decoded_in_place_and_a_bad_header_keeps_its_reason():
    from fleetcloak.codecs import decode_batch

    rec = AvlRecord(1_700_000_000_000, 1, -3.7, 40.4, -5, 10, 7, 33, 239, {239: 1, 78: 0x01020304050607})
    imei = "356307042441013"
    dgram = encode(AvlPacket(0x8E, (rec,), transport="udp", imei=imei, packet_id=0xCAFE, avl_packet_id=5, packet_type=1))
    assert udp_header_is(dgram, imei.encode())
    got = decode_batch([dgram], udp=[True])
    assert got.errors == [] and got.records() == decode_batch([encode(AvlPacket(0x8E, (rec,)))]).records()
    other = "352093081452251"
    assert not udp_header_is(dgram, other.encode()) and udp_header_error(dgram, other).reason == "bad_imei"
    assert not udp_header_is(dgram[:-1], imei.encode()) and udp_header_error(dgram[:-1], imei).reason == "truncated"
    bad_len = dgram[:6] + b"\x00\x0e" + dgram[8:]
    assert not udp_header_is(bad_len, imei.encode()) and udp_header_error(bad_len, imei).reason == "bad_imei"
    # through the pipeline: the same reasons, the datagram kept as it came
    pipe = PipelineBuilder(MasterKey.generate())(ControlSnapshot({}, {}, {}))
    udp_h = [("transport", b"udp")]
    r = pipe.process([Message(dgram[:-1], imei.encode(), udp_h), Message(dgram, other.encode(), udp_h)])
    assert r.counts.deadlettered == {"truncated": 1, "bad_imei": 1}
    assert sorted(o[2] for o in r.outputs) == sorted([dgram[:-1], dgram])


def test_packed_records_and_record_objects_give_the_same_result(fleet):
    """The worker's child hands the pipeline PackedRecords (columns); the in-loop runner
    and tests hand it record objects: one and the same result, dead letters included."""
    from fleetcloak.streams.recordbatch import FetchedRecord, PackedRecords, pack_records

    msgs = fleet["msgs"][:600]
    udp = next(m for m in msgs if ("transport", b"udp") in m.headers)
    msgs = msgs[:100] + [Message(udp.value[:-1], udp.key, udp.headers), Message(b"\x00\x00", b"not-an-imei"),
                         Message(None, udp.key, [("transport", b"tcp")]), Message(b"\x00\x01", None)] + msgs[100:]
    records = [FetchedRecord(("telematics.raw", i % 4, i, 1_700_000_000_000, 0, m.key, m.value, None,
                              -1 if m.key is None else len(m.key), -1 if m.value is None else len(m.value),
                              tuple(m.headers or ())))
               for i, m in enumerate(msgs)]
    builder = PipelineBuilder(MasterKey.generate())
    pipe = builder(ControlSnapshot(fleet["policies"], {}, {}))
    pipe.process(records)  # keys minted
    results = []
    for batch in (records, PackedRecords(pack_records(records))):
        builder.duplicates.clear()
        results.append(pipe.process(batch))
    objects, packed = results
    assert packed.counts == objects.counts and packed.counts.balanced()
    assert {"truncated", "bad_key"} <= set(packed.counts.deadlettered)
    assert packed.outputs == objects.outputs
    assert [(b.topic, b.keys, b.values) for b in packed.blocks] == [(b.topic, b.keys, b.values) for b in objects.blocks]


def test_a_batch_leaves_no_cycles_behind_even_with_faulty_datagrams(fleet):
    """The worker's child collects cycles only every 64 batches (streams/runner.py): a batch
    held in a cycle (a kept exception's traceback reaching its frame) stays in memory until
    then, and its pages are faulted in afresh for every batch after it."""
    pipe = PipelineBuilder(MasterKey.generate())(ControlSnapshot(fleet["policies"], {}, {}))
    msgs = fleet["msgs"][:400]
    udp = next(m for m in msgs if ("transport", b"udp") in m.headers)
    faulty = [Message(udp.value[:-1], udp.key, udp.headers), Message(b"\x00\x01", udp.key, udp.headers),
              Message(b"\x00\x00", b"not-an-imei")]
    pipe.process(msgs)  # keys minted, caches filled
    gc.collect()
    gc.disable()
    try:
        result = pipe.process(msgs + faulty)
        assert {"truncated", "bad_key"} <= set(result.counts.deadlettered)
        del result
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_per_packet_output_mode(fleet):
    pset = fleet["pset"]
    tenant = sorted(pset.tenants)[0]
    pol = pset.tenants[tenant].model_copy(update={
        "processor": pset.tenants[tenant].processor.model_copy(update={"output": "per_packet"})})
    policies = dict(fleet["policies"])
    policies[tenant.encode()] = policy_value(pol)
    counts, outputs, _ = run({**fleet, "policies": policies})
    packets = [json.loads(v) for t, _, v, _ in outputs if t == f"tenant.{tenant}.telemetry"]
    validator = _validator("processor_packet")
    for p in packets:
        validator.validate(p)
    assert sum(len(p["records"]) for p in packets) == counts.forwarded[("processor", tenant)]
    assert len(packets) < counts.forwarded[("processor", tenant)]


def test_a_change_of_the_keys_alone_is_absorbed_without_a_rebuild(fleet):
    builder = PipelineBuilder(MasterKey.generate())
    first = builder(ControlSnapshot(fleet["policies"], {}, {}))
    minted = _keys(first.process(fleet["msgs"][:200]).outputs)
    assert minted
    assert first.refresh(frozenset({"keys"}), ControlSnapshot(fleet["policies"], dict(minted), {}, 2)) is True
    assert first.refresh(frozenset({"keys", "subjects"}), ControlSnapshot(fleet["policies"], dict(minted), {}, 3)) is False
    # a shredded salt coming back as a tombstone is seen by the keyring at once
    gone = dict(minted[1:])
    generation = builder.keyring.generation
    assert first.refresh(frozenset({"keys"}), ControlSnapshot(fleet["policies"], gone, {}, 4)) is True
    assert builder.keyring.generation > generation


def test_codes_per_frame_give_a_tenants_rows_what_columns_would_compute_per_record():
    """The pipeline codes IMEIs and families once per frame and hands a tenant's Columns
    the result (Columns.known_codes): the same groups and the same IMEI per record as
    Columns computes from its own per-record objects."""
    import random

    from fleetcloak.anonymize.transform import Columns
    from fleetcloak.streams.pipeline import _Codes

    rng = random.Random(3)
    for _ in range(50):
        frames = rng.randint(1, 40)
        imeis = np.array([f"35{rng.randint(0, 9):013d}" for _ in range(frames)], dtype=object)
        fams = np.array([rng.choice(["FMB", "FMC", "FMM"]) for _ in range(frames)], dtype=object)
        frame_index = np.sort(np.array([rng.randrange(frames) for _ in range(rng.randint(1, 120))], dtype=np.int64))
        codes = _Codes(imeis, fams, frame_index)
        rows = np.flatnonzero(np.array([rng.random() < 0.6 for _ in frame_index]))
        if not len(rows):
            continue
        n = len(rows)
        own = Columns(imei=imeis[frame_index][rows], timestamp_ms=np.zeros(n, np.int64), lat=np.zeros(n),
                      lon=np.zeros(n), family=fams[frame_index][rows])
        told = Columns(imei=own.imei, timestamp_ms=own.timestamp_ms, lat=own.lat, lon=own.lon, family=own.family)
        told.known_codes(imei_codes=codes.imei_codes(rows), family_rows=codes.family_rows(rows))
        assert [(f, r.tolist()) for f, r in told.family_rows()] == [(f, r.tolist()) for f, r in own.family_rows()]
        (u1, i1), (u2, i2) = told.imei_codes(), own.imei_codes()
        assert u1[i1].tolist() == u2[i2].tolist() and sorted(u1.tolist()) == sorted(u2.tolist())


def test_steps_yield_between_tenants_and_return_what_process_returns(fleet):
    """The in-loop runner drives `steps`; child processes and tests call `process`: the
    same batch gives the same outputs and accounting either way."""
    builder = PipelineBuilder(MasterKey.generate())
    built = builder(ControlSnapshot(fleet["policies"], {}, {}))
    batch = fleet["msgs"][:2000]
    steps = built.steps(batch)
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as done:
            stepped = done.value
            break
    assert yields >= len(fleet["pset"].tenants)  # at least one pause per tenant in the batch
    builder.duplicates.clear()  # the same batch again, as new
    whole = built.process(batch)
    assert stepped.counts == whole.counts and stepped.counts.balanced()
    not_keys = lambda r: [m for m in r.messages() if m[0] != "fleetcloak.keys"]  # minted by the first run only
    assert not_keys(stepped) == not_keys(whole) and len(not_keys(whole)) > 1000

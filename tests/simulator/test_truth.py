"""The truth's counts match what the stream holds, fate by fate, classified independently."""
from __future__ import annotations

from collections import Counter, defaultdict

from fleetcloak.codecs import DecodeError, decode


def _explains(bad: bytes, good: bytes, transport: str) -> bool:
    """Is `bad` a corrupted copy of `good` (bit flip / count byte, cut, junk added)?"""
    if len(bad) == len(good):
        diff = [i for i, (a, b) in enumerate(zip(bad, good)) if a != b]
        if transport == "tcp":
            return len(diff) == 1 and bin(bad[diff[0]] ^ good[diff[0]]).count("1") == 1
        return diff == [len(good) - 1]
    if len(bad) < len(good):
        return good.startswith(bad)
    return bad.startswith(good) or bad.endswith(good)


def classify(h, lines: list[dict], truth: dict) -> dict[str, Counter]:
    known = h.known_imeis(truth)
    lo, hi = truth["reference"]["too_old_before_ms"], truth["reference"]["future_after_ms"]
    counts: dict[str, Counter] = defaultdict(Counter)
    seen: set = set()
    pending: dict[str, list[bytes]] = defaultdict(list)  # undecodable frames waiting for their resend
    for m in lines:
        imei, frame = m["imei"], bytes.fromhex(m["frame_hex"])
        try:
            pkt = decode(frame, m["transport"])
        except DecodeError:
            pending[imei].append(frame)
            continue
        n = len(pkt.records)
        for bad in [b for b in pending[imei] if _explains(b, frame, m["transport"])]:
            pending[imei].remove(bad)
            counts[imei]["corrupt"] += n
        if imei not in known:
            counts[imei]["unknown_device"] += n
            continue
        for r in pkt.records:
            t = r.timestamp_ms
            if t < lo or t > hi:
                counts[imei]["too_old" if t < lo else "future"] += 1
                continue
            k = h.record_key(imei, r)
            counts[imei]["duplicate" if k in seen else "valid"] += 1
            seen.add(k)
    assert not any(pending.values()), "every corrupt message is followed by the resend it caused"
    return counts


def test_counts_match_stream_fate_by_fate(faulty_run, h):
    truth, lines = faulty_run["truth"], faulty_run["lines"]
    got = classify(h, lines, truth)
    want = {imei: h.counter_of(c) for imei, c in truth["counts"].items()}
    assert {i: c for i, c in got.items() if c} == {i: c for i, c in want.items() if c}
    # Every fate occurs at a 20 % fault rate over 6 days, so the comparison means something.
    totals = sum(got.values(), Counter())
    for fate in ("valid", "corrupt", "too_old", "future", "duplicate", "unknown_device"):
        assert totals[fate] > 0, fate
    assert truth["totals"]["messages"] == len(lines)
    assert truth["totals"]["records"] == sum(totals.values())


def test_corrupt_messages_never_decode_and_are_counted(faulty_run):
    truth, lines = faulty_run["truth"], faulty_run["lines"]
    bad = Counter()
    for m in lines:
        try:
            decode(bytes.fromhex(m["frame_hex"]), m["transport"])
        except DecodeError:
            bad[m["imei"]] += 1
    assert bad == Counter({i: c["corrupt"] for i, c in truth["messages"].items() if c.get("corrupt")})
    f = truth["faults"]["messages"]
    assert sum(bad.values()) == f.get("crc", 0) + f.get("truncation", 0) + f.get("garbage", 0)
    assert sum(bad.values()) == truth["totals"]["corrupt_messages"]


def test_reference_times_are_unambiguous(faulty_run, h):
    """too_old records are >= 400 days before the start, future >= 366 days after the end."""
    truth, lines = faulty_run["truth"], faulty_run["lines"]
    day = 86_400_000
    known = h.known_imeis(truth)
    for imei, recs in h.decoded_by_imei(lines).items():
        if imei not in known:
            continue
        for r in recs:
            t = r.timestamp_ms
            assert (t <= truth["start_ms"] - 400 * day or t >= truth["end_ms"] + 366 * day
                    or truth["start_ms"] <= t < truth["end_ms"]), t


def test_stream_does_not_leak_fault_labels(faulty_run):
    for m in faulty_run["lines"][:200]:
        assert set(m) == {"imei", "transport", "frame_hex", "received_at"}


def test_stream_is_ordered_by_received_at(faulty_run):
    ts = [m["received_at"] for m in faulty_run["lines"]]
    assert ts == sorted(ts)


def test_the_worker_batch_decoder_sees_the_same_fates(faulty_run):
    """decode_batch (the worker's hot path, TCP frames) fails exactly the corrupt frames."""
    from fleetcloak.codecs import decode_batch

    tcp = [m for m in faulty_run["lines"] if m["transport"] == "tcp"]
    frames = [bytes.fromhex(m["frame_hex"]) for m in tcp]
    batch = decode_batch(frames)
    want_bad, want_records = set(), 0
    for i, f in enumerate(frames):
        try:
            want_records += len(decode(f, "tcp").records)
        except DecodeError:
            want_bad.add(i)
    assert {i for i, _ in batch.errors} == want_bad and want_bad
    assert len(batch) == want_records


def test_counts_by_tenant_add_up(faulty_run):
    truth = faulty_run["truth"]
    owner = {d["imei"]: t["id"] for t in truth["tenants"] for d in t["devices"]}
    want: dict = {}
    for imei, c in truth["counts"].items():
        acc = want.setdefault(owner.get(imei, ""), Counter())
        acc.update(c)
    got = {t: Counter({k: v for k, v in c.items() if v}) for t, c in truth["counts_by_tenant"].items()}
    assert got == {t: Counter({k: v for k, v in c.items() if v}) for t, c in want.items()}
    assert got[""]["unknown_device"] == truth["totals"]["unknown_device"] > 0

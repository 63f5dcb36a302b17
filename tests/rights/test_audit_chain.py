"""The audit chain's pure core: no broker."""
import copy

import pytest

from fleetcloak.streams.audit import (
    GENESIS, AuditError, append_to_log, canonical, chain_append, make_event, tips, verify,
)


def ev(action, i=0):
    return make_event(action, operator="alice", operator_source="cli", tenant="acme",
                      subject=f"subj_{i}", details={"i": i}, ts_ms=1_700_000_000_000 + i)


def build(n):
    log = []
    for i in range(n):
        log.append(append_to_log(log, ev("subject.erase", i)))
    return log


def test_canonical_is_sorted_compact_and_excludes_hash():
    e = chain_append(None, ev("x"))
    text = canonical(e).decode()
    assert " " not in text.replace("subject.erase", "") and '"hash"' not in text
    assert text.index('"action"') < text.index('"details"') < text.index('"v"')


def test_a_clean_chain_verifies():
    log = build(6)
    assert log[0]["prev_hash"] == GENESIS and [e["seq"] for e in log] == list(range(6))
    res = verify(log)
    assert res.ok and res.count == 6 and res.head_seq == 5 and res.head_hash == log[-1]["hash"]
    assert not res.forks and not res.open_tips


def test_removed_event_is_detected():
    log = build(6)
    del log[2]
    res = verify(log)
    assert not res.ok and res.broken_seq == 3 and "removed" in res.reason


def test_altered_event_is_detected():
    log = build(6)
    log[3]["outcome"] = "failed"
    res = verify(log)
    assert not res.ok and res.broken_seq == 3 and "altered" in res.reason


def test_altered_event_with_recomputed_hash_breaks_the_successor():
    from fleetcloak.streams.audit import event_hash

    log = build(6)
    log[3]["operator"] = "mallory"
    log[3]["hash"] = event_hash(log[3])
    res = verify(log)
    assert not res.ok and res.broken_seq == 4 and "removed" in res.reason


def test_reordered_events_are_detected():
    log = build(6)
    log[2], log[3] = log[3], log[2]
    res = verify(log)
    assert not res.ok and res.broken_index == 2 and "reordered" in res.reason


def test_removing_the_first_event_is_detected():
    log = build(3)
    res = verify(log[1:])
    assert not res.ok and res.broken_seq == 1


def test_duplicate_delivery_is_tolerated_and_reported():
    log = build(3)
    log.insert(2, copy.deepcopy(log[1]))
    res = verify(log)
    assert res.ok and res.duplicates == [1] and res.count == 3


def test_concurrent_writers_fork_then_the_next_append_merges_both_tips():
    log = build(3)
    a = append_to_log(log, ev("writer.a", 10))  # both writers read the same head
    b = append_to_log(log, ev("writer.b", 11))
    log += [a, b]
    res = verify(log)
    assert res.ok and res.forks == [3] and res.open_tips == [3, 3]
    assert {e["hash"] for e in tips(log)} == {a["hash"], b["hash"]}
    c = append_to_log(log, ev("writer.c", 12))
    assert c["prev_hash"] == b["hash"] and c["merged"] == [a["hash"]] and c["seq"] == 4
    log.append(c)
    res = verify(log)
    assert res.ok and res.forks == [3] and res.open_tips == []
    # and the merged sibling is protected like any other event
    del log[3]
    res = verify(log)
    assert not res.ok and "removed" in res.reason


def test_a_raw_imei_never_enters_the_trail():
    with pytest.raises(AuditError):
        chain_append(None, make_event("subject.erase", operator="o", operator_source="cli",
                                      details={"imei": "356307042441013"}))


def test_operator_resolution_order(monkeypatch):
    from fleetcloak.streams.audit import resolve_operator

    monkeypatch.setenv("FLEETCLOAK_OPERATOR", "dpo@example")
    assert resolve_operator("cli-op") == ("cli-op", "cli")
    assert resolve_operator(None) == ("dpo@example", "env")
    monkeypatch.delenv("FLEETCLOAK_OPERATOR")
    assert resolve_operator(None)[1] == "os-user"

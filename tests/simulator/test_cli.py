"""Determinism, the CLI's summary and defaults, policies, and a clean stop on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest

from fleetcloak.cli import main
from fleetcloak.simulator.cli import default_start, monday_start


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, monkeypatch, h):
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        d = tmp_path / name
        d.mkdir()
        monkeypatch.chdir(d)  # same relative paths, so even the recorded args match
        assert main(["simulate", "--tenants", "2", "--vehicles", "4", "--days", "2", "--seed", str(seed),
                     "--start", h.START, "--faults", "0.1", "--sink", "file:out.jsonl",
                     "--truth", "truth.json", "--quiet"]) == 0
        runs.append(((d / "out.jsonl").read_bytes(), (d / "truth.json").read_bytes()))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0] and runs[0][1] != runs[2][1]
    assert len(runs[0][0]) > 10_000


def test_faults_never_change_the_model(tmp_path, h):
    """Fault streams are separate: the clean records are the same with and without faults."""
    clean = h.run_cli(tmp_path, name="clean", tenants=1, vehicles=3, days=1)
    faulty = h.run_cli(tmp_path, name="faulty", tenants=1, vehicles=3, days=1, faults=0.3)
    t = faulty["truth"]
    lo, hi = t["start_ms"], t["end_ms"]
    keys = lambda run: {h.record_key(i, r) for i, rs in h.decoded_by_imei(run["lines"]).items()
                        if i in h.known_imeis(t) for r in rs if lo <= r.timestamp_ms < hi}
    assert keys(clean) == keys(faulty)


def test_json_summary(tmp_path, capsys, h):
    assert main(["simulate", "--tenants", "1", "--vehicles", "2", "--days", "1", "--start", h.START,
                 "--sink", f"file:{tmp_path / 'o.jsonl'}", "--json", "--fault", "duplicate=0.5"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["start"] == h.START and s["vehicles"] == 2
    assert set(s["faults"]) == {"duplicate"}
    assert s["fates"]["duplicate"] > 0 and s["messages"] == len((tmp_path / "o.jsonl").read_text().splitlines())


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["simulate", "--tenants", "3", "--vehicles", "2", "--sink", f"file:{tmp_path / 'x'}"]) == 2
    assert main(["simulate", "--fault", "meteor=0.1", "--sink", f"file:{tmp_path / 'x'}"]) == 2


def test_default_start_ends_at_the_last_midnight():
    assert default_start(7, date(2026, 11, 22)) == date(2026, 11, 15)


def test_monday_start_is_the_latest_monday_whose_window_ends_by_today():
    # 2026-12-07 is a Monday: two days end by today from Saturday the 5th, so the Monday before
    assert monday_start(2, date(2026, 12, 7)) == date(2026, 11, 30)
    assert monday_start(2, date(2026, 12, 9)) == date(2026, 12, 7)   # Mon + Tue, ending Wednesday 00:00
    assert monday_start(7, date(2026, 12, 14)) == date(2026, 12, 7)
    for offset in range(14):
        today = date(2026, 12, 1) + timedelta(days=offset)
        for days in (1, 3, 7):
            start = monday_start(days, today)
            assert start.weekday() == 0 and start + timedelta(days=days) <= today
            assert start + timedelta(days=days + 7) > today  # the latest such Monday


def test_start_monday_on_the_command_line(tmp_path, capsys):
    assert main(["simulate", "--tenants", "1", "--vehicles", "1", "--days", "1", "--start", "monday",
                 "--sink", f"file:{tmp_path / 'o.jsonl'}", "--truth", str(tmp_path / "t.json"), "--quiet"]) == 0
    start = date.fromisoformat(json.loads((tmp_path / "t.json").read_text())["start"][:10])
    assert start == monday_start(1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["simulate", "--start", "tuesday", "--sink", f"file:{tmp_path / 'x'}"])
    assert refused.value.code == 2 and "YYYY-MM-DD) or monday, got 'tuesday'" in capsys.readouterr().err


def test_policies_validate_with_the_anonymize_model(faulty_run):
    from fleetcloak.anonymize.policy import PolicySet

    files = sorted(Path(faulty_run["policies"]).glob("*.yaml"))
    ps = PolicySet.from_files(files)
    truth = faulty_run["truth"]
    assert set(ps.tenants) == {t["id"] for t in truth["tenants"]} and ps.service is not None
    for t in truth["tenants"]:
        pol = ps.tenants[t["id"]]
        assert {d.imei for d in pol.devices} == {d["imei"] for d in t["devices"]}
        names = {z.name for z in pol.processor.privacy_zones}
        assert names == {z["name"] for z in t["zones"]}
        homes = {d["id"]: d["home"] for d in truth["drivers"] if d["tenant"] == t["id"]}
        for z in pol.processor.privacy_zones:  # each home / the depot lies inside its zone
            zt = next(x for x in t["zones"] if x["name"] == z.name)
            lat, lon = homes[zt["driver"]] if zt["kind"] == "home" else t["depot"]
            assert z.shape.contains(__import__("shapely").geometry.Point(lon, lat))
    p1, p2, p3 = (ps.tenants[t["id"]] for t in truth["tenants"][:3])
    assert p1.processor.location.precision == "exact" and "device" not in p1.processor.pseudonymise
    assert p2.processor.location.precision == "grid" and set(p2.processor.pseudonymise) >= {"device", "driver"}
    assert p1.analytics and p2.analytics and not p3.analytics


def test_sigterm_stops_cleanly_and_the_truth_matches_what_was_sent(tmp_path, h):
    out, truth = tmp_path / "o.jsonl", tmp_path / "t.json"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetcloak.cli", "simulate", "--tenants", "1", "--vehicles", "3",
         "--days", "3", "--start", h.START, "--faults", "0.1", "--speed", "20000",
         "--sink", f"file:{out}", "--truth", str(truth), "--quiet"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not out.exists():
        time.sleep(0.05)  # the sink exists: the signal handlers are installed
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    t = json.loads(truth.read_text())
    lines = out.read_text().splitlines()
    assert t["interrupted"] is True
    assert 0 < len(lines) == t["totals"]["messages"]
    per_imei = Counter(json.loads(line)["imei"] for line in lines)
    assert per_imei == Counter({i: sum(c.values()) for i, c in t["messages"].items()})


def test_replay_sends_the_same_stream_again(faulty_run, tmp_path, capsys):
    again = tmp_path / "again.jsonl"
    assert main(["simulate", "--replay", str(faulty_run["out"]), "--sink", f"file:{again}", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert again.read_bytes() == Path(faulty_run["out"]).read_bytes()
    assert s["messages"] == faulty_run["truth"]["totals"]["messages"]
    assert main(["simulate", "--replay", str(again), "--truth", str(tmp_path / "t.json")]) == 2

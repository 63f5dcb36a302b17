"""Fixtures for the simulator tests: one faulty multi-day run shared by the module tests.

The stream is read back and decoded with fleetcloak.codecs only, never with simulator
code, so the tests check the simulator against the codec, not against itself.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fleetcloak.cli import main

# A Monday, so the run has working days (trips, driver changes) and a Saturday.
START = "2026-03-02"


def run_cli(tmp: Path, *extra: str, name: str = "out", seed: int = 7, tenants: int = 3,
            vehicles: int = 9, days: int = 2, faults: float = 0.0, start: str = START) -> dict:
    out, truth = tmp / f"{name}.jsonl", tmp / f"{name}.truth.json"
    rc = main(["simulate", "--tenants", str(tenants), "--vehicles", str(vehicles), "--days", str(days),
               "--seed", str(seed), "--start", start, "--faults", str(faults),
               "--sink", f"file:{out}", "--truth", str(truth), "--quiet", *extra])
    assert rc == 0
    return {"out": out, "truth_path": truth, "truth": json.loads(truth.read_text()),
            "lines": [json.loads(line) for line in out.read_text().splitlines()]}


@pytest.fixture(scope="session")
def faulty_run(tmp_path_factory):
    """3 tenants, 9 vehicles, 6 days (Mon-Sat), 20 % faults, policies written."""
    tmp = tmp_path_factory.mktemp("sim")
    r = run_cli(tmp, "--write-policies", str(tmp / "policies"), days=6, faults=0.2)
    r["policies"] = tmp / "policies"
    return r


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory):
    """The same fleet without faults, 3 weekdays."""
    return run_cli(tmp_path_factory.mktemp("clean"), days=3, faults=0.0)


def record_key(imei: str, r) -> tuple:
    return (imei, r.timestamp_ms, r.priority, r.lon, r.lat, r.altitude, r.angle, r.satellites,
            r.speed, r.event_io_id, r.generation_type, tuple(sorted(r.io.items())))


def known_imeis(truth: dict) -> set[str]:
    return {d["imei"] for t in truth["tenants"] for d in t["devices"]}


def decoded_by_imei(lines: list[dict]) -> dict[str, list]:
    """IMEI -> records of every decodable message, in stream order (codecs only)."""
    from fleetcloak.codecs import DecodeError, decode

    out: dict[str, list] = defaultdict(list)
    for m in lines:
        try:
            pkt = decode(bytes.fromhex(m["frame_hex"]), m["transport"])
        except DecodeError:
            continue
        out[m["imei"]].extend(pkt.records)
    return out


def counter_of(d: dict) -> Counter:
    return Counter({k: v for k, v in d.items() if v})


class _Helpers:
    """conftest's helpers for the test modules (importlib mode: conftest is not importable)."""

    run_cli = staticmethod(run_cli)
    record_key = staticmethod(record_key)
    known_imeis = staticmethod(known_imeis)
    decoded_by_imei = staticmethod(decoded_by_imei)
    counter_of = staticmethod(counter_of)
    START = START


@pytest.fixture(scope="session")
def h():
    return _Helpers

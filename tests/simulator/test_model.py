"""The model: frames decode to exactly the records it made; trips, drivers and ids are plausible."""
from __future__ import annotations

import math
from collections import defaultdict

import pytest

from fleetcloak.codecs import DecodeError, decode
from fleetcloak.simulator.engine import SimConfig, Simulation
from fleetcloak.simulator.faults import FaultRates
from fleetcloak.simulator.fleet import MODELS, luhn_valid

START_S = 1772409600  # 2026-03-02 00:00 UTC, a Monday


def _sim(faults: float = 0.0, days: int = 2, vehicles: int = 6) -> Simulation:
    return Simulation(SimConfig(11, 2, vehicles, days, START_S, FaultRates.build(faults)))


def test_every_frame_decodes_to_exactly_the_model_records():
    sim = _sim()
    made: dict[str, list] = defaultdict(list)
    for f in sim.factories:  # capture what the model produced, before any packetising
        build = f.build

        def spy(rng, tr, st, _build=build, _imei=f.veh.imei):
            recs = _build(rng, tr, st)
            made[_imei].extend(recs)
            return recs
        f.build = spy
    sent: dict[str, list] = defaultdict(list)
    for em in sim.emissions():
        pkt = decode(em.frame, em.transport)
        assert pkt.records == em.packet.records
        assert pkt.codec == MODELS[sim.fleet.vehicles[em.device].model]["codec"]
        if em.transport == "udp":
            assert pkt.imei == em.imei
        sent[em.imei].extend(pkt.records)
    assert sent.keys() == made.keys()
    for imei in made:
        assert sent[imei] == made[imei]
        assert len(sent[imei]) > 50


def test_faulty_copies_fail_and_clean_copies_decode():
    sim = _sim(faults=0.3, days=1)
    kinds = defaultdict(int)
    for em in sim.emissions():
        kinds[em.copy] += 1
        if em.copy == "corrupt":
            with pytest.raises(DecodeError):
                decode(em.frame, em.transport)
        else:
            assert decode(em.frame, em.transport).records == em.packet.records
    assert {"original", "corrupt", "resend", "duplicate", "phantom"} <= set(kinds)


def test_packets_respect_the_size_limits_and_hold_several_records(clean_run):
    devices = {d["imei"]: d for t in clean_run["truth"]["tenants"] for d in t["devices"]}
    multi = 0
    for m in clean_run["lines"]:
        frame = bytes.fromhex(m["frame_hex"])
        limit = MODELS[devices[m["imei"]]["model"]]["max_packet"]
        assert len(frame) <= limit
        multi += len(decode(frame, m["transport"]).records) > 1
    assert multi > 0.3 * len(clean_run["lines"])


def _haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(a))


def test_trips_are_physically_plausible(clean_run, h):
    moved = 0
    for imei, recs in h.decoded_by_imei(clean_run["lines"]).items():
        recs = sorted(recs, key=lambda r: r.timestamp_ms)
        prev_fix = None
        for r in recs:
            assert 0 <= r.angle < 360 and 0 <= r.speed <= 140
            if r.satellites == 0:
                # no fix: last fix kept, angle and speed 0 (protocol notes 4.1)
                assert r.angle == 0 and r.speed == 0
                if prev_fix is not None:
                    assert (r.lat, r.lon) == (prev_fix.lat, prev_fix.lon)
                continue
            if prev_fix is not None:
                dt_h = (r.timestamp_ms - prev_fix.timestamp_ms) / 3_600_000
                d_km = _haversine_m(prev_fix.lat, prev_fix.lon, r.lat, r.lon) / 1000
                assert dt_h > 0 and d_km / dt_h <= 250, (imei, r.timestamp_ms, d_km, dt_h)
                moved += d_km
            prev_fix = r
    assert moved > 100  # they actually drive


def test_no_fix_stretches_exist(clean_run, h):
    recs = [r for rs in h.decoded_by_imei(clean_run["lines"]).values() for r in rs]
    nofix = [r for r in recs if r.satellites == 0]
    assert nofix and any(r.io.get(240) == 1 for r in nofix)  # also while driving (tunnels)
    assert all(r.io.get(69, 2) == 2 for r in nofix)


def test_driver_changes_show_up_in_the_driver_io(clean_run, h):
    truth = clean_run["truth"]
    devices = {d["imei"]: d for t in truth["tenants"] for d in t["devices"]}
    cards = {d["id"]: d["tacho_card"] for d in truth["drivers"]}
    switched = 0
    for imei, recs in h.decoded_by_imei(clean_run["lines"]).items():
        dev = devices[imei]
        io = dev["driver_io"]
        prev = 0
        seen = []
        for r in sorted(recs, key=lambda r: r.timestamp_ms):
            key = r.io[io]
            if key and key != prev:
                assert r.event_io_id == io, "a driver login is an event record of the driver IO"
                seen.append(f"{key:016x}")
            if key:
                assert f"{key:016x}" in dev["drivers"]
                card = cards[f"{key:016x}"]
                ids = (195, 196) if dev["family"] == "64x" else (147, 148)
                if card:
                    assert (r.io[ids[0]].to_bytes(8, "big") + r.io[ids[1]].to_bytes(8, "big")).decode() == card
                else:
                    assert ids[0] not in r.io
            else:
                assert r.io[239] == 0 or r.event_io_id == 239  # no key only while parked
            prev = key
        switched += len(set(seen)) > 1
    assert switched >= 1  # shared vehicles change driver mid-day


def test_private_mode_only_for_private_mode_drivers(faulty_run, h):
    truth = faulty_run["truth"]
    private = {d["id"] for d in truth["drivers"] if d["private_mode"]}
    devices = {d["imei"]: d for t in truth["tenants"] for d in t["devices"]}
    on = 0
    for imei, recs in h.decoded_by_imei(faulty_run["lines"]).items():
        if imei not in devices:
            continue
        for r in recs:
            if r.io.get(391):
                on += 1
                assert devices[imei]["codec"] == 0x8E
                assert set(devices[imei]["drivers"]) & private
    assert on > 0


def test_identifiers_look_real(faulty_run):
    from fleetcloak.anonymize.policy import validate_imei

    truth = faulty_run["truth"]
    imeis = [d["imei"] for t in truth["tenants"] for d in t["devices"]] + truth["unknown_devices"]
    assert len(set(imeis)) == len(imeis)
    for imei in imeis:
        assert luhn_valid(imei) and validate_imei(imei) == imei
    ids = [d["id"] for d in truth["drivers"]]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert len(i) == 16 and int(i, 16) != 0 and i == i.lower()
    assert any(d["tacho_card"] for d in truth["drivers"])
    assert {d["model"] for t in truth["tenants"] for d in t["devices"]} <= set(MODELS)


def test_the_shared_runs_cover_every_codec_and_both_transports(faulty_run, clean_run):
    for run in (faulty_run, clean_run):
        devs = [d for t in run["truth"]["tenants"] for d in t["devices"]]
        assert {d["codec"] for d in devs} == {0x08, 0x8E, 0x10}
        assert {d["transport"] for d in devs} == {"tcp", "udp"}
        assert {m["transport"] for m in run["lines"]} == {"tcp", "udp"}

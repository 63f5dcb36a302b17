"""Benchmark: pseudonymise + coarsen + zone-test, vectorised, beside a naive per-record loop.

Batches of 10,000 records from 2,000 devices, 20 privacy zones per tenant, warm caches
(the pseudonym cache is filled by a first pass, as in a running worker). Prints medians
of several runs; never asserts (CONVENTIONS §6). Run: .venv/bin/python bench/anonymize.py
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import statistics
import time

import numpy as np
import shapely

from fleetcloak.anonymize.coarsen import M_PER_DEG, snap_to_grid
from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore
from fleetcloak.anonymize.policy import TenantPolicy, luhn_check_digit
from fleetcloak.anonymize.pseudonyms import Pseudonymizer
from fleetcloak.anonymize.service_policy import ServicePolicy
from fleetcloak.anonymize.transform import Columns, ControllerTransform, GroupGate, ProcessorTransform
from fleetcloak.anonymize.zones import ZoneIndex

BATCH = 10_000
DEVICES = 2_000
ZONES = 20
T0 = 1_795_000_000_000
GRID_M = 250.0


def make_data(seed: int = 1):
    rng = np.random.default_rng(seed)
    bodies = rng.choice(10**13, DEVICES, replace=False) + 35 * 10**12
    imeis = np.array([f"{b:014d}{luhn_check_digit(f'{b:014d}')}" for b in bodies.tolist()])
    dev = rng.integers(0, DEVICES, BATCH)
    ibuttons = rng.integers(1, 2**63, DEVICES, dtype=np.int64).astype(np.uint64)
    ib = np.where(rng.random(BATCH) < 0.3, 0, ibuttons[dev]).astype(np.uint64)
    lat = rng.uniform(52.3, 52.7, BATCH)
    lon = rng.uniform(13.1, 13.7, BATCH)
    # 20 zones of ~300-800 m in the same area (homes, depots)
    zx, zy = rng.uniform(13.1, 13.7, ZONES), rng.uniform(52.3, 52.7, ZONES)
    zones = [shapely.box(x, y, x + rng.uniform(0.004, 0.012), y + rng.uniform(0.003, 0.007)) for x, y in zip(zx, zy)]
    ts = T0 + np.sort(rng.integers(0, 60_000, BATCH)).astype(np.int64)
    return imeis[dev], ts, lat, lon, ib, zones


def vectorised(pseudo: Pseudonymizer, zindex: ZoneIndex, imei, ts, lat, lon, ib):
    dev = pseudo.imeis(imei, ts)
    drv = pseudo.u64("driver", ib, ts)
    clat, clon = snap_to_grid(lat, lon, GRID_M)
    inside = zindex.locate(lat, lon) >= 0
    clat[inside] = np.nan
    clon[inside] = np.nan
    return dev, drv, clat, clon


def naive(key: bytes, zones, imei, ts, lat, lon, ib):
    """The obvious per-record code: hmac.new per identifier, math per point, shapely
    Point.within per zone."""
    out = []
    nb = math.ceil(90 * M_PER_DEG / GRID_M)
    dlat = 90.0 / nb
    for i in range(len(imei)):
        d = hmac.new(key, imei[i].encode(), hashlib.sha256).hexdigest()[:32]
        v = int(ib[i])
        drv = hmac.new(key, v.to_bytes(8, "big"), hashlib.sha256).hexdigest()[:32] if v else 0
        la, lo = float(lat[i]), float(lon[i])
        band = math.floor(la / dlat)
        edge = (band if band >= 0 else -band - 1) * dlat
        ns = max(1, math.ceil(360 * M_PER_DEG * math.cos(math.radians(edge)) / GRID_M))
        w = 360.0 / ns
        clat, clon = (band + 0.5) * dlat, (math.floor((lo + 180) / w) + 0.5) * w - 180
        p = shapely.Point(lo, la)
        if any(p.within(z) for z in zones):
            clat = clon = None
        out.append((d, drv, clat, clon))
    return out


def median_rate(fn, n_records: int, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return n_records / med, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--naive-records", type=int, default=2_000, help="records per naive run (it is slow)")
    args = ap.parse_args()

    imei, ts, lat, lon, ib, zones = make_data()
    kr = Keyring(MemoryKeyStore(), MasterKey.generate(ephemeral=False))
    pseudo = Pseudonymizer(kr, tenant="bench")
    zindex = ZoneIndex(zones)
    vectorised(pseudo, zindex, imei, ts, lat, lon, ib)  # warm the pseudonym cache
    misses_before = pseudo.computed

    v_rate, v_times = median_rate(lambda: vectorised(pseudo, zindex, imei, ts, lat, lon, ib), BATCH, args.runs)
    assert pseudo.computed == misses_before  # warm: nothing recomputed
    k = args.naive_records
    key = kr.derive("bench", "processor", "device", "2026m11").reveal()
    n_rate, n_times = median_rate(lambda: naive(key, zones, imei[:k], ts[:k], lat[:k], lon[:k], ib[:k]), k, max(3, args.runs // 2))

    # the whole processor / controller transforms (incl. record_id, private mode, IO)
    pol = TenantPolicy.model_validate({
        "tenant": "bench",
        "processor": {"location": {"precision": "grid", "grid_m": GRID_M},
                      "privacy_zones": [{"name": f"z{i}", "geometry": shapely.geometry.mapping(z)} for i, z in enumerate(zones)]},
    })
    cols = Columns(imei=imei, timestamp_ms=ts, lat=lat, lon=lon, speed=np.full(BATCH, 50), angle=np.full(BATCH, 90),
                   altitude=np.full(BATCH, 40), satellites=np.full(BATCH, 9), io={78: ib, 391: np.zeros(BATCH, np.uint64)},
                   content=[b"%d-%d" % (i, t) for i, t in enumerate(ts.tolist())])
    proc = ProcessorTransform(pol, kr)
    proc.apply(cols)
    p_rate, _ = median_rate(lambda: proc.apply(cols), BATCH, args.runs)
    ctrl = ControllerTransform(ServicePolicy(service="bench", location={"h3_resolution": 8}, min_group_size=3), kr, pol, gate=GroupGate(3))
    ctrl.apply(cols)
    c_rate, _ = median_rate(lambda: ctrl.apply(cols), BATCH, max(3, args.runs // 2))

    print(f"anonymize bench: batches of {BATCH:,} records, {DEVICES:,} devices, {ZONES} zones, warm cache, "
          f"median of {args.runs} runs, one core")
    print(f"  vectorised pseudonymise+coarsen+zone-test : {v_rate:>12,.0f} records/s "
          f"(batch {statistics.median(v_times) * 1e3:.2f} ms)")
    print(f"  naive per-record loop (baseline)          : {n_rate:>12,.0f} records/s")
    print(f"  speed-up                                  : {v_rate / n_rate:>12.1f} x")
    print(f"  ProcessorTransform.apply (full, incl. record_id): {p_rate:>9,.0f} records/s")
    print(f"  ControllerTransform.apply (H3 res 8, k=3)       : {c_rate:>9,.0f} records/s")


if __name__ == "__main__":
    main()

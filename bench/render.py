"""Benchmark: output records as JSON bytes (anonymize/render.py) beside the readable path.

    .venv/bin/python bench/render.py [--records N] [--batch B] [--runs K] [--seed S]

Batches of decoded packets as a worker sees them: 2,000 devices of three tenants
(examples/policies), 1-4 records per packet, ~12 IO elements per record (ignition,
movement, GSM, speed, voltages, cell ids, iButton on two thirds of the records, a
two-part driver card on a fifth, private mode 391), each device within ~1 km of its
home somewhere in a city.
Each tenant's processor and controller results are computed once, then timed:

  processor_json(res, batch)       the C renderer, IO rules applied element by element
  controller_json(res)
  baseline: res.records(raw_io) + json.dumps per record, the readable reference the
            output is defined by (the same bytes; checked on every batch before timing)

Prints ns per record (median of --runs, CPU time) and the ratio. Not a test: never
asserts on times (CONVENTIONS.md section 6).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from fleetcloak.anonymize.batch_columns import columns_from_batch
from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore
from fleetcloak.anonymize.policy import PolicySet, luhn_check_digit
from fleetcloak.anonymize.render import controller_json, processor_json
from fleetcloak.anonymize.transform import ControllerTransform, GroupGate, ProcessorTransform
from fleetcloak.codecs import AvlPacket, AvlRecord, decode_batch, encode

REPO = Path(__file__).resolve().parent.parent
T0 = 1_795_000_000_000
CARD = b"DRIVERCARD123456"


def make_batches(n_records: int, batch: int, seed: int):
    """[(decoded batch, imei per record)], about `batch` records each."""
    rnd = random.Random(seed)
    devices = []
    for _ in range(2_000):
        body = f"{rnd.randrange(35 * 10**12, 36 * 10**12):014d}"
        home = (rnd.uniform(52.3, 52.7), rnd.uniform(13.1, 13.7))
        devices.append((f"{body}{luhn_check_digit(body)}", rnd.getrandbits(63) | 1, rnd.random() < 0.2, home))
    out, frames, imeis, count = [], [], [], 0
    while count < n_records:
        imei, ibutton, card, (lat, lon) = rnd.choice(devices)
        recs = []
        for _ in range(rnd.randint(1, 4)):
            io = {239: rnd.randint(0, 1), 240: rnd.randint(0, 1), 21: rnd.randint(0, 5), 24: rnd.randint(0, 130),
                  66: rnd.randint(11_000, 14_000), 67: rnd.randint(3_000, 4_200), 205: rnd.randrange(65536),
                  206: rnd.randrange(65536), 16: rnd.randrange(2**32), 69: 1}
            if rnd.random() < 0.67:
                io[78] = ibutton
            if card:
                io[147], io[148] = int.from_bytes(CARD[:8], "big"), int.from_bytes(CARD[8:], "big")
            if rnd.random() < 0.5:
                io[391] = int(rnd.random() < 0.3)
            recs.append(AvlRecord(timestamp_ms=T0 + rnd.randrange(3_600_000), priority=0,
                                  lon=round(lon + rnd.uniform(-0.01, 0.01), 7),
                                  lat=round(lat + rnd.uniform(-0.01, 0.01), 7),
                                  altitude=rnd.randint(20, 90), angle=rnd.randrange(360), satellites=rnd.randint(4, 14),
                                  speed=rnd.randint(0, 90), event_io_id=0, io=io))
        frames.append(encode(AvlPacket(codec=0x8E, records=tuple(recs))))
        imeis.append(imei)
        count += len(recs)
        if count >= (len(out) + 1) * batch:
            b = decode_batch(frames)
            assert not b.errors
            out.append((b, np.asarray(imeis, dtype=object)[b.frame_index]))
            frames, imeis = [], []
    if frames:
        b = decode_batch(frames)
        out.append((b, np.asarray(imeis, dtype=object)[b.frame_index]))
    return out


def dumps(d: dict) -> bytes:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    policies = PolicySet.from_files(sorted((REPO / "examples" / "policies").glob("*.yaml")))
    keyring = Keyring(MemoryKeyStore(), MasterKey.generate(ephemeral=False))
    batches = make_batches(args.records, args.batch, args.seed)
    procs, ctrls = [], []
    for name, tenant in policies.tenants.items():
        pt = ProcessorTransform(tenant, keyring)
        ct = ControllerTransform(policies.service, keyring, tenant, gate=GroupGate(1))
        for batch, imei in batches:
            res = pt.apply(columns_from_batch(batch, imei, io_ids=pt.io_ids_needed()))
            raw_io = [dict(r.io) for r in batch.records()]
            assert processor_json(res, batch) == [dumps(d) for d in res.records(raw_io)], name
            procs.append((res, batch, raw_io))
            ctrl = ct.apply(columns_from_batch(batch, imei, io_ids=range(65536)))
            assert controller_json(ctrl) == [dumps(d) for d in ctrl.records()], name
            ctrls.append(ctrl)
    n_proc = sum(len(res) for res, _, _ in procs)
    n_ctrl = sum(int(c.keep.sum()) for c in ctrls)

    timings: dict[str, list[float]] = {k: [] for k in ("proc", "proc_ref", "ctrl", "ctrl_ref")}
    for _ in range(args.runs):
        timings["proc"].append(cpu(lambda: [processor_json(res, batch) for res, batch, _ in procs]))
        timings["proc_ref"].append(cpu(lambda: [[dumps(d) for d in res.records(raw)] for res, _, raw in procs]))
        timings["ctrl"].append(cpu(lambda: [controller_json(c) for c in ctrls]))
        timings["ctrl_ref"].append(cpu(lambda: [[dumps(d) for d in c.records()] for c in ctrls]))
    ns = {k: statistics.median(v) * 1e9 / (n_proc if k.startswith("proc") else n_ctrl) for k, v in timings.items()}
    print(f"render bench: {len(batches)} batches of ~{args.batch:,} records x {len(policies.tenants)} tenants, "
          f"median of {args.runs} runs, CPU time per output record")
    print(f"  processor_json (C, IO rules in C)          : {ns['proc']:>8,.0f} ns/record")
    print(f"  records(raw_io) + json.dumps (baseline)    : {ns['proc_ref']:>8,.0f} ns/record "
          f"({ns['proc_ref'] / ns['proc']:.1f} x)")
    print(f"  controller_json (C)                        : {ns['ctrl']:>8,.0f} ns/record")
    print(f"  records() + json.dumps (baseline)          : {ns['ctrl_ref']:>8,.0f} ns/record "
          f"({ns['ctrl_ref'] / ns['ctrl']:.1f} x)")


if __name__ == "__main__":
    main()

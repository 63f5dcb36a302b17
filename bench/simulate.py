"""Simulator throughput: records/s to a file sink, beside the cost of encoding alone.

    .venv/bin/python bench/simulate.py [--vehicles 30] [--days 3] [--runs 5] [--faults 0.02]

Measured in the same run, medians of --runs:
  simulate -> file   the whole `fleetcloak simulate` path (fleet, trips, telemetry,
                     packetiser, faults, merge, file sink writing JSON lines, the
                     truth's counting), in-process
  encode alone       fleetcloak.codecs.encode of exactly the packets that run produced,
                     as AvlPacket/AvlRecord objects: the baseline (what any producer of
                     packets pays per record)
  encode_rows        fleetcloak.codecs.encode_rows of the same packets as int tuples: an upper
                     bound on what the simulator pays to encode (its records never become
                     objects; most of its packets are slices of the bytes of one
                     encode_columns call per codec and layout pair per simulated day, plus
                     framing; sends with record faults go through encode_rows)
  model only         trips + telemetry (the simulator's own generation, no packets), as
                     emissions() runs it: each day's drives planned and records built for all
                     devices at once
  simulator's share  (simulate -> file) with the encode_rows time taken out (an estimate)
Rates are records per CPU second of this process (time.process_time), so other load on
a shared machine does not distort them; wall-clock rates are printed beside.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

from fleetcloak.codecs import encode
from fleetcloak.codecs.avl import row_layout
from fleetcloak.codecs.teltonika import encode_rows
from fleetcloak.simulator.engine import SimConfig, Simulation
from fleetcloak.simulator.faults import FaultRates
from fleetcloak.simulator.sinks.file import FileSink
from fleetcloak.simulator.truth import Truth

START_S = 1772409600  # 2026-03-02, a Monday


def _rows(p):
    """encode_rows' arguments for the packet p (rows, one layout per row)."""
    c16 = p.codec == 0x10
    rows = [(r.timestamp_ms, r.priority, round(r.lon * 1e7), round(r.lat * 1e7), r.altitude, r.angle,
             r.satellites, r.speed, r.event_io_id, *((r.generation_type,) if c16 else ()), *r.io.values())
            for r in p.records]
    lays = [row_layout(p.codec, r.io_width) for r in p.records]
    return (p.codec, rows, lays, p.transport, p.imei, p.packet_id, p.avl_packet_id, p.packet_type)


def one_run(args, path: str):
    cfg = SimConfig(args.seed, args.tenants, args.vehicles, args.days, START_S, FaultRates.build(args.faults))
    c0, w0 = time.process_time(), time.perf_counter()
    sim = Simulation(cfg, keep_packets=False)  # as the CLI runs it, truth bookkeeping included
    truth = Truth(sim.fleet, cfg)
    sink = FileSink(path)
    n = n_msg = 0
    for em in sim.emissions():
        for e, fates in sink.send(em):
            truth.add(e, fates)
        n += em.n_records
        n_msg += 1
    sink.close()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    packets = [em.packet for em in Simulation(cfg).emissions()]  # the same packets, untimed
    c0 = time.process_time()
    for p in packets:
        encode(p)
    enc = time.process_time() - c0
    as_rows = [_rows(p) for p in packets]
    c0 = time.process_time()
    for a in as_rows:
        encode_rows(*a)
    enc_rows = time.process_time() - c0
    # Model only: the same device-days, trips and telemetry, no packetising.
    sim2 = Simulation(cfg)
    gc.disable()  # as Simulation.emissions() does
    c0 = time.process_time()
    m = 0
    for day in range(cfg.days):
        m += sum(len(d) for d in sim2.model_days(day, sim2.begin_day(day)))
    model = time.process_time() - c0
    gc.enable()
    return {"records": n, "cpu": cpu, "wall": wall, "encode": enc, "encode_rows": enc_rows,
            "model": model, "model_records": m,
            "bytes": os.path.getsize(path), "messages": n_msg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=3)
    ap.add_argument("--vehicles", type=int, default=30)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", type=float, default=0.02)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        runs = [one_run(args, os.path.join(d, "out.jsonl")) for _ in range(args.runs)]
    r0 = runs[0]
    med = lambda f: statistics.median(f(r) for r in runs)
    full = med(lambda r: r["records"] / r["cpu"])
    full_wall = med(lambda r: r["records"] / r["wall"])
    enc = med(lambda r: r["records"] / r["encode"])
    model = med(lambda r: r["model_records"] / r["model"])
    enc_rows = med(lambda r: r["records"] / r["encode_rows"])
    share = med(lambda r: r["records"] / (r["cpu"] - r["encode_rows"]))
    enc_frac = med(lambda r: r["encode_rows"] / r["cpu"])
    print(f"fleetcloak simulate benchmark: {args.tenants} tenants, {args.vehicles} vehicles, {args.days} days, "
          f"faults {args.faults}; {r0['records']:,} records in {r0['messages']:,} messages, "
          f"{r0['bytes'] / 1e6:.1f} MB of JSON lines; median of {args.runs} runs")
    print(f"  simulate -> file     {full:>10,.0f} records/s CPU   ({full_wall:,.0f}/s wall)")
    print(f"  encode alone         {enc:>10,.0f} records/s CPU   (baseline: fleetcloak.codecs.encode of the same packets)")
    print(f"  encode_rows          {enc_rows:>10,.0f} records/s CPU   (the same packets as int tuples: about what the simulator pays)")
    print(f"  model only           {model:>10,.0f} records/s CPU   (trips + telemetry, no packets)")
    print(f"  simulator's share    {share:>10,.0f} records/s CPU   (simulate -> file without the encode_rows time)")
    print(f"  encode_rows is {enc_frac:.0%} of the CPU time of a run; target 200,000 records/s "
          f"{'met' if full >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    main()

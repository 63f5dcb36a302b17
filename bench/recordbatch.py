"""Benchmark: Kafka RecordBatch v2 buffers from build_batches beside aiokafka's
BatchBuilder.append loop (what the producer loop did per output message).

140,000 records, 40-byte keys, values of ~300 bytes (250-350), one timestamp, batches of
at most --max-bytes (default 1 MiB). Both sides end with finished buffers (CRC written)
and make the same cuts: aiokafka's C builder keeps a batch strictly below its batch_size,
so the baseline gets max_bytes + 1 (the buffers are checked identical before timing).
Prints medians of --runs runs; never asserts (CONVENTIONS §6).
Run: .venv/bin/python bench/recordbatch.py
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from aiokafka.producer.message_accumulator import BatchBuilder

from fleetcloak.streams import _recordbatch
from fleetcloak.streams.recordbatch import build_batches

TS = 1_795_000_000_000


def aiokafka_loop(keys, values, max_bytes):
    out = []
    max_bytes += 1  # its C builder fills a batch to batch_size - 1 at most
    builder = BatchBuilder(max_bytes, 0)
    for k, v in zip(keys, values):
        if builder.append(timestamp=TS, key=k, value=v) is None:
            out.append(builder._build())
            builder = BatchBuilder(max_bytes, 0)
            builder.append(timestamp=TS, key=k, value=v)
    if builder.record_count():
        out.append(builder._build())
    return out


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=140_000)
    ap.add_argument("--max-bytes", type=int, default=1 << 20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    keys = [os.urandom(40) for _ in range(args.records)]
    values = [os.urandom(rng.randrange(250, 351)) for _ in range(args.records)]
    ours = [bytes(b._build()) for b in build_batches(keys, values, TS, args.max_bytes)]
    theirs = [bytes(b) for b in aiokafka_loop(keys, values, args.max_bytes)]
    same = "identical" if ours == theirs else "DIFFERENT"
    mb = sum(map(len, ours)) / 1e6

    base = median_s(lambda: aiokafka_loop(keys, values, args.max_bytes), args.runs)
    fast = median_s(lambda: build_batches(keys, values, TS, args.max_bytes), args.runs)
    print(f"{args.records:,} records, {mb:.1f} MB in {len(ours)} batches of <= {args.max_bytes:,} bytes "
          f"(buffers {same}); CRC-32C: {_recordbatch.CRC_IMPL}; median of {args.runs}")
    print(f"  aiokafka BatchBuilder.append loop  {base * 1e3:8.1f} ms  {args.records / base / 1e6:6.2f} M records/s")
    print(f"  build_batches                      {fast * 1e3:8.1f} ms  {args.records / fast / 1e6:6.2f} M records/s")
    print(f"  ratio                              {base / fast:8.1f} x")


if __name__ == "__main__":
    main()

"""Benchmark: a fetched partition's bytes into records, aiokafka's PartitionRecords (a
ConsumerRecord per message, in Python) beside streams/fetch.py's FastPartitionRecords (a
run of batches per C call), on the same bytes.

The bytes are shaped like the worker's input (telematics.raw): 15-byte IMEI keys, values
of 13-1272 bytes (median ~380: the simulator's AVL frames), headers received_at and
transport, written by aiokafka's producer BatchBuilder in batches of --batch-bytes
(its default 16 KiB) and cut into fetches of --fetch-bytes (max_partition_fetch_bytes,
default 1 MiB), offsets as the broker gives them. Both sides check CRCs (the default) and
hand out the records as FetchResult.getall(max_records=8000) does (aiokafka: its loop;
ours: one slice). The records are checked equal before timing. Runs alternate A/B;
prints medians of --runs. Never asserts (CONVENTIONS §6).
Run: .venv/bin/python bench/fetch.py
"""
from __future__ import annotations

import argparse
import random
import statistics
import struct
import time

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from fleetcloak.streams import _recordbatch
from fleetcloak.streams.fetch import FastPartitionRecords, _Fetched

TP = TopicPartition("telematics.raw", 0)
MAX_RECORDS = 8_000  # the worker's LoopSettings.max_records
FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value", "checksum",
          "serialized_key_size", "serialized_value_size", "headers")


def fetches(n: int, batch_bytes: int, fetch_bytes: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    batches, builder, offset, ts = [], None, 0, 1_795_996_801_000
    for i in range(n):
        key = b"35%013d" % rng.randrange(10_000)
        value = rng.randbytes(min(1272, max(13, int(rng.lognormvariate(5.9, 0.45)))))
        headers = [("received_at", b"%d" % (ts + i)), ("transport", b"udp" if i % 10 == 0 else b"tcp")]
        if builder is None:
            builder, base = BatchBuilder(batch_bytes, 0), offset
        if builder.append(timestamp=ts + i, key=key, value=value, headers=headers) is None:
            batches.append(_with_offset(builder, base))
            builder, base = BatchBuilder(batch_bytes, 0), offset
            builder.append(timestamp=ts + i, key=key, value=value, headers=headers)
        offset += 1
    batches.append(_with_offset(builder, base))
    out, cur = [], b""
    for b in batches:  # whole batches up to fetch_bytes per fetch (a real fetch may end in a cut one)
        if cur and len(cur) + len(b) > fetch_bytes:
            out.append(cur)
            cur = b""
        cur += b
    return out + [cur]


def _with_offset(builder, base: int) -> bytes:
    buf = bytearray(builder._build())
    struct.pack_into(">q", buf, 0, base)
    return bytes(buf)


def aiokafka_getall(data: bytes) -> list:
    pr = PartitionRecords(TP, MemoryRecords(data), None, 0, None, None, True, READ_UNCOMMITTED)
    ret_list = []
    for msg in pr:  # FetchResult.getall's loop
        ret_list.append(msg)
        if len(ret_list) >= MAX_RECORDS:
            break
    return ret_list


def ours_getall(data: bytes) -> list:
    return FastPartitionRecords(TP, _Fetched(data), None, 0, None, None, True, READ_UNCOMMITTED).take(MAX_RECORDS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch-bytes", type=int, default=16384)
    ap.add_argument("--fetch-bytes", type=int, default=1 << 20)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    data = fetches(args.records, args.batch_bytes, args.fetch_bytes, args.seed)
    n = 0
    for d in data:
        a, b = aiokafka_getall(d), ours_getall(d)
        same = [tuple(getattr(r, f) for f in FIELDS) for r in a] == [tuple(getattr(r, f) for f in FIELDS) for r in b]
        if not same:
            raise SystemExit("records differ: not timing")
        n += len(a)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        for d in data:
            fn(d)
        return time.perf_counter() - t0

    base, fast = [], []
    for _ in range(args.runs):
        base.append(timed(aiokafka_getall))
        fast.append(timed(ours_getall))
    b, f = statistics.median(base), statistics.median(fast)
    print(f"{n:,} records in {len(data)} fetches of <= {args.fetch_bytes:,} bytes, batches of {args.batch_bytes:,}; "
          f"records identical; CRC-32C checked ({_recordbatch.CRC_IMPL}); median of {args.runs}, alternating")
    print(f"  aiokafka PartitionRecords + getall loop  {b * 1e3:8.1f} ms  {n / b / 1e6:6.2f} M msgs/s  {b / n * 1e9:6.0f} ns/msg")
    print(f"  FastPartitionRecords.take                {f * 1e3:8.1f} ms  {n / f / 1e6:6.2f} M msgs/s  {f / n * 1e9:6.0f} ns/msg")
    print(f"  ratio                                    {b / f:8.1f} x")


if __name__ == "__main__":
    main()

"""Consume -> produce of N 1 KB messages on the embedded broker: the baseline the worker is
measured against, and the delivery loop with a no-op (passthrough) pipeline.

Modes, each run on the same input topic with a fresh consumer group and output topic:
  aiokafka   plain aiokafka: getmany, send() per message, await the batch's futures,
             commit (the same at-least-once contract, written the obvious way)
  loop       fleetcloak's BatchLoop in this process (per-partition batch builders)
  worker     `fleetcloak worker --until-drained` as a subprocess: the Faust app + the
             same loop

Timing starts at the first fetched batch in hand (a group join, ~5 s on Tansu, is
excluded) and ends when every output is acknowledged and its offsets committed; the
loop and the worker measure it themselves (BatchLoop.stream_seconds, the worker's
--summary-json `stream_s`). Prints each run and the
medians. Usage: .venv/bin/python bench/passthrough.py [-n 100000] [--runs 3] [--broker B]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time


def make_inputs(n: int, size: int) -> list[tuple[bytes, bytes]]:
    filler = os.urandom(size)
    return [(b"35%013d" % (i % 1000), b"%09d" % i + filler[: size - 9]) for i in range(n)]


async def bench_aiokafka(bootstrap: str, src: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from fleetcloak.streams.topicio import unique_name

    dst = unique_name("bench.out")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=False,
                                max_batch_size=1 << 20, max_request_size=(1 << 20) + (64 << 10))
    consumer = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=unique_name("bench.grp"),
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    try:
        done, t0 = 0, None
        while done < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            if not batch:
                continue
            t0 = t0 or time.perf_counter()
            futures = [await producer.send(dst, value=r.value, key=r.key, headers=list(r.headers))
                       for records in batch.values() for r in records]
            await asyncio.gather(*futures)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
            done += len(futures)
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
        await producer.stop()


async def bench_loop(bootstrap: str, src: str, n: int) -> float:
    from fleetcloak.streams.loop import BatchLoop, LoopSettings
    from fleetcloak.streams.seam import passthrough_factory
    from fleetcloak.streams.topicio import unique_name

    loop = BatchLoop(LoopSettings(bootstrap, input_topic=src, group_id=unique_name("bench.grp"),
                                  stop_when_drained=True),
                     passthrough_factory(unique_name("bench.out")))
    await loop.run()
    if loop.consumed != n:
        raise SystemExit(f"the loop consumed {loop.consumed} of {n} messages")
    return n / loop.stream_seconds


def bench_worker(bootstrap: str, src: str, n: int) -> float:
    import tempfile

    from fleetcloak.streams.broker import free_port
    from fleetcloak.streams.topicio import unique_name

    with tempfile.TemporaryDirectory() as tmp:
        summary = os.path.join(tmp, "summary.json")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetcloak.cli", "worker", "--broker", bootstrap, "--input-topic", src,
             "--group", unique_name("bench.grp"), "--pipeline", "passthrough", "--passthrough-topic",
             unique_name("bench.out"), "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1",
             "-l", "warning", "--until-drained", "--summary-json", summary],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if proc.wait(300) != 0:
                raise SystemExit(f"worker exited {proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        s = json.loads(open(summary).read())
    if s["consumed"] != n:
        raise SystemExit(f"worker consumed {s['consumed']} of {n} messages")
    return n / s["stream_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="messages per run (default 100000)")
    ap.add_argument("--size", type=int, default=1024, help="message size in bytes (default 1024)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--modes", default="aiokafka,loop,worker")
    ap.add_argument("--broker", default=None, help="use this broker instead of starting Tansu")
    args = ap.parse_args()

    from fleetcloak.streams.broker import EmbeddedBroker
    from fleetcloak.streams.topicio import create_topic, produce, unique_name

    embedded = None if args.broker else EmbeddedBroker().start()
    bootstrap = args.broker or embedded.bootstrap
    try:
        src = unique_name("bench.raw")
        create_topic(bootstrap, src, args.partitions)
        t = time.perf_counter()
        produce(bootstrap, src, make_inputs(args.n, args.size))
        print(f"broker {bootstrap} ({'Tansu, embedded' if embedded else 'given'}); {args.n} x {args.size} B "
              f"in {args.partitions} partitions, produced in {time.perf_counter() - t:.1f}s")
        results: dict[str, list[float]] = {}
        for run in range(args.runs):
            for mode in args.modes.split(","):
                if mode == "aiokafka":
                    rate = asyncio.run(bench_aiokafka(bootstrap, src, args.n))
                elif mode == "loop":
                    rate = asyncio.run(bench_loop(bootstrap, src, args.n))
                elif mode == "worker":
                    rate = bench_worker(bootstrap, src, args.n)
                else:
                    raise SystemExit(f"unknown mode {mode}")
                results.setdefault(mode, []).append(rate)
                print(f"run {run + 1} {mode:9s} {rate:10,.0f} msgs/s", flush=True)
        base = statistics.median(results["aiokafka"]) if "aiokafka" in results else None
        print("medians:")
        for mode, rates in results.items():
            med = statistics.median(rates)
            ratio = f"  ({med / base:.2f}x plain aiokafka)" if base else ""
            print(f"  {mode:9s} {med:10,.0f} msgs/s{ratio}")
    finally:
        if embedded:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

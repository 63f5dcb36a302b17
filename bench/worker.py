"""Records/s through one `fleetcloak worker` end to end on the embedded broker, beside a
plain aiokafka consume -> produce passthrough of the same raw messages, in the same run.

    .venv/bin/python bench/worker.py             # 3 tenants, 200 vehicles, 3 days (~277k records), 3 runs
    .venv/bin/python bench/worker.py --quick     # 200 vehicles, 1 day (~35k records), 1 run: a smoke run

What it does, once: start Tansu (fleetcloak.streams.broker.EmbeddedBroker), simulate a
fleet straight into `telematics.raw` (`fleetcloak simulate --sink kafka:// --start monday`,
4 partitions, real packet sizes: 4.4 records and 405 B per message on the default
fleet; the Monday start keeps that from depending on the weekday of the run: a window
over a weekend, parked vehicles, measured 3.2), `fleetcloak policy apply` its policies
(FLEETCLOAK_MASTER_KEY from MasterKey.new_base64()). Then, per run:

  passthrough   bench/passthrough.py's bench_aiokafka on telematics.raw: getmany, send()
                per message, await the batch, commit (msgs/s, the baseline)
  per_record    `fleetcloak worker --until-drained` with the policies as simulated
                (processor.output: per_record, the default): one output message per record
  per_packet    the same after every tenant policy is re-applied with
                processor.output: per_packet: one output message per packet

Each worker run uses a fresh consumer group, so it reads the whole topic again; the
outputs go to the usual tenant and analytics topics (they grow across runs).

Timing (the worker's startup - Faust, control plane, a group join of ~5 s on Tansu - is
not throughput): the same rule as the passthrough's, from the first fetched batch in
hand to the last commit, measured by the worker itself (`stream_s` of --summary-json:
BatchLoop.stream_seconds): rate = N / stream_s. Records/s = that msgs/s x records per
message (the worker's own accounting). The messages / seconds spent inside batches
(fetch waits excluded) is printed beside as "busy".

Also (--pure, on by default): the pipeline alone in this process, in memory, no Kafka:
`TelemetryPipeline.process` over the same messages read back from the topic, in batches
of 5,000 messages (CPU seconds of this process, time.process_time).

Prints every run and the medians, and the ratios against the passthrough. Never asserts
a time (CONVENTIONS.md §6).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from passthrough import bench_aiokafka  # noqa: E402  (bench/passthrough.py)

RAW = "telematics.raw"


def cli(env: dict, *args: str, timeout: float = 600) -> str:
    r = subprocess.run([sys.executable, "-m", "fleetcloak.cli", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"fleetcloak {' '.join(args[:2])} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def per_packet_policies(src: Path, dst: Path) -> list[Path]:
    """Copies of the tenant policies with processor.output: per_packet (service policy unchanged)."""
    import yaml

    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        if "tenant" in doc:
            doc.setdefault("processor", {})["output"] = "per_packet"
        q = dst / p.name
        q.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(q)
    return out


def run_worker(env: dict, bootstrap: str, n: int, workdir: Path, tag: str, extra: tuple = ()) -> dict:
    from fleetcloak.streams.broker import free_port
    from fleetcloak.streams.topicio import unique_name

    summary = workdir / f"{tag}.summary.json"
    log = workdir / f"{tag}.log"
    cmd = [sys.executable, "-m", "fleetcloak.cli", "worker", "--broker", bootstrap, "--group", unique_name("bench.grp"),
           "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1", "-l", "info", "--until-drained", "--summary-json", str(summary), *extra]
    cpu0 = _children_cpu()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        rc = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    cpu_s = _children_cpu() - cpu0  # the worker and its pipeline process, startup included
    if rc != 0:
        raise SystemExit(f"worker exited {rc}; log:\n{log.read_text(errors='replace')[-3000:]}")
    s = json.loads(summary.read_text())
    if s["consumed"] != n or not s["balanced"]:
        raise SystemExit(f"worker consumed {s['consumed']} of {n} messages (balanced={s['balanced']}); see {log}")
    msgs_s = n / s["stream_s"]
    return {"msgs_s": msgs_s, "records_s": msgs_s * s["received"] / n, "out_msgs_s": msgs_s * s["produced"] / n,
            "records": s["received"], "produced": s["produced"], "busy_msgs_s": n / s["busy_s"], "cpu_s": cpu_s}


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def read_raw(bootstrap: str) -> list:
    from fleetcloak.streams.seam import Message
    from fleetcloak.streams.topicio import read_all

    return [Message(r.value, r.key, list(r.headers or ()), topic=r.topic, partition=r.partition, offset=r.offset)
            for r in read_all(bootstrap, RAW, timeout=60)]


def bench_pure(bootstrap: str, policies_dirs: dict[str, Path], master_b64: str, runs: int) -> dict[str, list[float]]:
    """The pipeline alone, in this process: records per CPU second."""
    from fleetcloak.anonymize import PolicySet
    from fleetcloak.anonymize.keystore import MasterKey
    from fleetcloak.streams.cli_policy_apply import policy_key, policy_value
    from fleetcloak.streams.pipeline import PipelineBuilder
    from fleetcloak.streams.seam import ControlSnapshot, Counts

    msgs = read_raw(bootstrap)
    out: dict[str, list[float]] = {}
    for mode, d in policies_dirs.items():
        pset = PolicySet.from_files(sorted(d.glob("*.yaml")))
        policies = {policy_key(p): policy_value(p) for p in [*pset.tenants.values(), pset.service]}
        for _ in range(runs):
            pipe = PipelineBuilder(MasterKey.from_base64(master_b64))(ControlSnapshot(policies, {}, {}))
            counts = Counts()
            c0 = time.process_time()
            for k in range(0, len(msgs), 5000):
                counts.add(pipe.process(msgs[k:k + 5000]).counts)
            out.setdefault(mode, []).append(counts.received / (time.process_time() - c0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=3)
    ap.add_argument("--vehicles", type=int, default=200)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--faults", type=float, default=0.02)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="200 vehicles, 1 day, 1 run")
    ap.add_argument("--modes", default="per_record,per_packet", help="worker modes (default both)")
    ap.add_argument("--no-pure", action="store_true", help="skip the in-process pipeline figure")
    ap.add_argument("--pipeline", default="child",
                    help="where the worker runs its pipeline, comma-separated to compare them in the same runs: "
                         "child (the worker's default: a child process) and/or loop (--no-pipeline-process)")
    args = ap.parse_args()
    if args.quick:
        args.vehicles, args.days, args.runs = 200, 1, 1

    from fleetcloak.anonymize.keystore import MasterKey
    from fleetcloak.streams.broker import EmbeddedBroker
    from fleetcloak.streams.topicio import true_end_offsets

    work = Path(tempfile.mkdtemp(prefix="fleetcloak-bench-worker-"))
    broker = EmbeddedBroker(log_path=work / "tansu.log").start()
    master = MasterKey.new_base64()
    env = {**os.environ, "FLEETCLOAK_MASTER_KEY": master, "FLEETCLOAK_OPERATOR": "bench", "PYTHONUNBUFFERED": "1"}
    try:
        bootstrap = broker.bootstrap
        t = time.perf_counter()
        cli(env, "simulate", "--tenants", str(args.tenants), "--vehicles", str(args.vehicles), "--days", str(args.days),
            "--start", "monday", "--seed", str(args.seed), "--faults", str(args.faults), "--sink", f"kafka://{bootstrap}",
            "--truth", str(work / "truth.json"), "--write-policies", str(work / "policies"), "--quiet")
        truth = json.loads((work / "truth.json").read_text())["totals"]
        n = sum(true_end_offsets(bootstrap, RAW).values())
        print(f"broker {bootstrap} (Tansu, embedded); fleet: {args.tenants} tenants, {args.vehicles} vehicles, "
              f"{args.days} day(s), faults {args.faults}: {n:,} messages, {truth['records']:,} records "
              f"({truth['records'] / max(n, 1):.2f} per message, {truth['bytes'] / max(n, 1):.0f} B per message), "
              f"simulated in {time.perf_counter() - t:.0f}s; workdir {work}", flush=True)
        base_policies = sorted((work / "policies").glob("*.yaml"))
        pp_policies = per_packet_policies(work / "policies", work / "policies_per_packet")
        results: dict = {}
        wheres = args.pipeline.split(",")
        if not set(wheres) <= {"child", "loop"}:
            raise SystemExit(f"--pipeline takes child and/or loop, got {args.pipeline}")
        for mode in args.modes.split(","):
            if mode not in ("per_record", "per_packet"):
                raise SystemExit(f"unknown mode {mode}")
            cli(env, "policy", "apply", *map(str, base_policies if mode == "per_record" else pp_policies),
                "--broker", bootstrap)
            for run in range(args.runs):
                rate = asyncio.run(bench_aiokafka(bootstrap, RAW, n))
                results.setdefault("passthrough", []).append(rate)
                print(f"run {run + 1} passthrough {rate:10,.0f} msgs/s", flush=True)
                for where in wheres:
                    r = run_worker(env, bootstrap, n, work, f"{mode}-{where}-{run + 1}",
                                   ("--pipeline-process",) if where == "child" else ("--no-pipeline-process",))
                    results.setdefault((mode, where), []).append(r)
                    print(f"run {run + 1} {mode:10s} {where:5s} {r['msgs_s']:10,.0f} msgs/s in, "
                          f"{r['records_s']:10,.0f} records/s, {r['out_msgs_s']:10,.0f} msgs/s out "
                          f"({r['produced']:,} outputs); busy {r['busy_msgs_s']:,.0f} msgs/s; "
                          f"worker CPU {r['cpu_s']:.1f} s", flush=True)
        pure = {} if args.no_pure else bench_pure(
            bootstrap, {"per_record": work / "policies", "per_packet": work / "policies_per_packet"}, master, args.runs)
        base = statistics.median(results["passthrough"])
        print(f"medians of {args.runs} run(s) per mode:")
        print(f"  passthrough   {base:10,.0f} msgs/s  (plain aiokafka, {len(results['passthrough'])} runs)")
        for mode in ("per_record", "per_packet"):
            for where in wheres:
                if (mode, where) not in results:
                    continue
                med = {k: statistics.median(r[k] for r in results[mode, where])
                       for k in ("msgs_s", "records_s", "out_msgs_s", "busy_msgs_s", "cpu_s")}
                print(f"  {mode:10s} {where:5s} {med['msgs_s']:10,.0f} msgs/s in  ({med['msgs_s'] / base:.2f}x passthrough), "
                      f"{med['records_s']:10,.0f} records/s, {med['out_msgs_s']:10,.0f} msgs/s out "
                      f"({med['out_msgs_s'] / base:.2f}x passthrough); busy {med['busy_msgs_s']:,.0f} msgs/s; "
                      f"worker CPU {med['cpu_s']:.1f} s (startup included)")
        for mode, rates in pure.items():
            print(f"  pure pipeline {mode:11s} {statistics.median(rates):10,.0f} records/s per CPU second "
                  f"(in process, no Kafka)")
        print("targets (issue 5): per_packet >= 0.50x passthrough msgs/s; per_record >= 100,000 records/s")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

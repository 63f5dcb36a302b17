"""`fleetcloak demo`: the whole product once, on this machine, in about a minute.

    embedded broker ─▶ simulated fleet (a week, some faults) ─▶ telematics.raw
    policy apply (tenant + service policies, key epochs minted)
    worker --until-drained ─▶ tenant.<t>.telemetry, analytics.telemetry, deadletter
    summary: counts per route, dead-letter reason and drop rule; sample records;
             throughput; the audit trail verified

Everything it starts (broker, worker) is stopped whatever happens: an error, Ctrl-C,
SIGTERM. With `--broker` it uses a broker you run instead of starting one. The master
key is generated for the run and never stored (the demo says so): production reads it
from FLEETCLOAK_MASTER_KEY or a key file and refuses to start without one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--broker", help="use this broker (HOST:PORT) instead of starting the embedded one")
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--vehicles", type=int, default=36, help="vehicles in all (default 36)")
    p.add_argument("--days", type=int, default=7, help="simulated days (default 7)")
    p.add_argument("--faults", type=float, default=0.03, help="total fault rate (default 0.03)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workdir", help="keep the run's files here (default: a temporary folder, removed)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def run(args) -> int:
    from fleetcloak.anonymize.keystore import MasterKey
    from fleetcloak.streams.broker import EmbeddedBroker, free_port

    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    broker = None
    worker: subprocess.Popen | None = None
    tmp = None
    try:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="fleetcloak-demo-")
            work = Path(tmp.name)
        say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
        if args.broker:
            bootstrap = args.broker
        else:
            broker = EmbeddedBroker(log_path=work / "tansu.log").start()
            bootstrap = broker.bootstrap
            say(f"embedded broker (Tansu) on {bootstrap}")
        env = {**os.environ, "FLEETCLOAK_MASTER_KEY": MasterKey.new_base64(),
               "FLEETCLOAK_OPERATOR": os.environ.get("FLEETCLOAK_OPERATOR", "demo"), "PYTHONUNBUFFERED": "1"}
        say("master key: generated for this demo only and never stored (production reads "
            "FLEETCLOAK_MASTER_KEY or a key file and refuses to start without one)")

        def cli(*argv: str) -> str:
            r = subprocess.run([sys.executable, "-m", "fleetcloak.cli", *argv], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"fleetcloak {' '.join(argv[:2])} failed ({r.returncode}):\n{r.stderr or r.stdout}")
            return r.stdout

        t0 = time.monotonic()
        sim = json.loads(cli("simulate", "--tenants", str(args.tenants), "--vehicles", str(args.vehicles),
                             "--days", str(args.days), "--seed", str(args.seed), "--faults", str(args.faults),
                             "--sink", f"kafka://{bootstrap}", "--truth", str(work / "truth.json"),
                             "--write-policies", str(work / "policies"), "--json"))
        say(f"simulated {args.tenants} tenants, {args.vehicles} vehicles, {args.days} days: "
            f"{sim.get('packets', sim.get('messages', '?'))} packets, {sim.get('records', '?')} records "
            f"-> telematics.raw ({time.monotonic() - t0:.1f}s)")
        policies = sorted(str(p) for p in (work / "policies").glob("*.yaml"))
        say(cli("policy", "apply", *policies, "--broker", bootstrap).strip())

        summary_path = work / "worker-summary.json"
        log_path = work / "worker.log"
        say("worker: running until telematics.raw is drained ...")
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "fleetcloak.cli", "worker", "--broker", bootstrap, "--until-drained",
                 "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1", "-l", "info",
                 "--summary-json", str(summary_path)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            code = worker.wait()
        worker = None
        if code != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the worker exited with {code}:\n{tail}")
        totals = json.loads(summary_path.read_text())
        out = _summary(bootstrap, totals, json.loads((work / "truth.json").read_text()))
        out["audit"] = cli("audit", "verify", "--broker", bootstrap).strip().splitlines()[-1:]
        out["broker"] = bootstrap
        if args.json:
            print(json.dumps(out, indent=2, sort_keys=True))
        else:
            _print(out)
        return 0
    except _Stop as stop:
        print(f"demo: stopped by {stop}", file=sys.stderr)
        return 130
    except Exception as exc:  # the demo reports and cleans up; the traceback is for bugs
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()
        for s, h in old.items():
            signal.signal(s, h)


def _summary(bootstrap: str, totals: dict, truth: dict) -> dict:
    from fleetcloak.streams.topicio import read_all

    analytics = read_all(bootstrap, "analytics.telemetry")
    sample_proc = None
    per_topic = {}
    for t in truth["tenants"]:
        msgs = read_all(bootstrap, f"tenant.{t['id']}.telemetry")
        per_topic[f"tenant.{t['id']}.telemetry"] = len(msgs)
        for m in msgs:
            rec = json.loads(m.value)
            if sample_proc is None or (rec.get("driver") and rec.get("lat") is not None):
                sample_proc = rec
                if rec.get("driver") and rec.get("lat") is not None:
                    break
    per_topic["analytics.telemetry"] = len(analytics)
    sample_ana = None
    for m in analytics:
        rec = json.loads(m.value)
        sample_ana = rec
        if rec.get("lat") is not None:
            break
    return {
        "records": {"in": totals["received"], "forwarded": totals["forwarded"],
                    "deadlettered": totals["deadlettered"], "dropped": totals["dropped"],
                    "analytics_copies": totals["copies"], "analytics_skipped": totals.get("analytics_skipped", {}),
                    "balanced": totals["balanced"]},
        "truth": {k: truth["totals"][k] for k in ("valid", "corrupt", "too_old", "future", "duplicate", "unknown_device")},
        "messages_per_topic": per_topic,
        "throughput": {"messages": totals["consumed"], "seconds_busy": round(totals["busy_s"], 3),
                       "records_per_s": round(totals["received"] / totals["busy_s"]) if totals["busy_s"] else None},
        "sample_processor_record": sample_proc,
        "sample_analytics_record": sample_ana,
    }


def _print(out: dict) -> None:
    r = out["records"]
    print()
    print(f"records in: {r['in']}   balanced: {r['balanced']}")
    print("  forwarded  " + _fmt(r["forwarded"]))
    print("  analytics  " + _fmt(r["analytics_copies"]))
    print("  kept off analytics by rule  " + _fmt(r["analytics_skipped"]))
    print("  dead letters by reason  " + _fmt(r["deadlettered"]))
    print("  dropped by rule  " + _fmt(r["dropped"]))
    t = out["truth"]
    print(f"  simulator truth: valid={t['valid']} too_old={t['too_old']} future={t['future']} "
          f"duplicate={t['duplicate']} unknown_device={t['unknown_device']} corrupt={t['corrupt']}")
    print("messages per output topic  " + _fmt(out["messages_per_topic"]))
    th = out["throughput"]
    print(f"throughput: {th['messages']} raw messages, {th['seconds_busy']}s in batches, "
          f"{th['records_per_s']} records/s while busy")
    print("sample processor record:")
    print("  " + json.dumps(out["sample_processor_record"]))
    print("sample analytics record:")
    print("  " + json.dumps(out["sample_analytics_record"]))
    print("audit trail: " + " ".join(out["audit"]))


def _fmt(d: dict) -> str:
    items = sorted(Counter(d).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k}={v}" for k, v in items) or "-"

"""`fleetcloak simulate`: generate a fleet's traffic into a sink, with its ground truth.

  fleetcloak simulate --tenants 3 --vehicles 24 --days 7 --seed 1 \\
      --sink file:raw.jsonl --truth truth.json --write-policies policies/ --faults 0.05

--start defaults to (today 00:00 UTC) - DAYS, so the simulated days end at the most
recent midnight: a pipeline processing the stream now sees valid records inside its
12-month window. The same arguments on the same UTC date give byte-identical output;
pass --start for bytes that never change (tests do). `--start monday` takes the latest
Monday from which the DAYS days end by today: the traffic has the same weekly shape
whatever day it runs (the fleet drives on workdays and mostly stands at weekends, so a
two-day window ending on a Monday is parked vehicles only), for CI runs and benchmarks
that must compare. The start is printed in the summary and written to the truth.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import date, datetime, timedelta, timezone


def _start_date(s: str) -> date | str:
    if s == "monday":
        return s
    try:
        return date.fromisoformat(s[:10])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--start wants an ISO date (YYYY-MM-DD) or monday, got {s!r}") from None


def _fault(s: str) -> tuple[str, float]:
    name, _, rate = s.partition("=")
    try:
        return name.strip(), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fault wants NAME=RATE (e.g. crc=0.01), got {s!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .faults import DEFAULT_MIX

    p.add_argument("--tenants", type=int, default=3, help="tenants (default 3)")
    p.add_argument("--vehicles", type=int, default=12, help="vehicles in total, dealt over the tenants (default 12)")
    p.add_argument("--days", type=int, default=1, help="simulated days (default 1)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--start", type=_start_date, default=None,
                   help="first simulated day, YYYY-MM-DD, or monday: the latest Monday from which DAYS days "
                        "end by today (default: today UTC minus DAYS)")
    p.add_argument("--sink", default=None,
                   help="file:PATH | kafka://HOST:PORT | tcp://HOST:PORT | udp://HOST:PORT "
                        "(default: kafka://BROKER if a broker is given, else file:- = stdout)")
    p.add_argument("--broker", default=os.environ.get("FLEETCLOAK_BROKER"),
                   help="Kafka bootstrap HOST:PORT, used when --sink is not given "
                        "(default $FLEETCLOAK_BROKER)")
    p.add_argument("--topic", default="telematics.raw", help="Kafka topic (default telematics.raw)")
    p.add_argument("--transport", choices=("mixed", "tcp", "udp"), default="mixed",
                   help="device transports (default mixed: about 1 in 4 on UDP; tcp:// and udp:// sinks force theirs)")
    p.add_argument("--truth", default=None, metavar="PATH", help="write the ground-truth manifest (JSON)")
    p.add_argument("--write-policies", default=None, metavar="DIR",
                   help="write one tenant policy per tenant and a service policy (YAML)")
    p.add_argument("--faults", type=float, default=0.0, metavar="R",
                   help=f"total fault rate, spread over {', '.join(DEFAULT_MIX)} (default 0)")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME=RATE",
                   help="set one fault's rate (repeatable; overrides its share of --faults)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="send at simulated time's pace")
    pace.add_argument("--speed", type=float, default=None, metavar="F",
                      help="send F times faster than real time (e.g. 3600: an hour a second)")
    p.add_argument("--timeout", type=float, default=5.0, help="device sinks: ACK timeout in seconds (default 5)")
    p.add_argument("--attempts", type=int, default=3, help="device sinks: sends per packet before giving up (default 3)")
    p.add_argument("--replay", default=None, metavar="PATH",
                   help="send a file sink's JSON lines again to --sink, as written (load tests)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _warn_about_the_clock(start_s: int, days: int) -> None:
    """The truth's fates assume processing between the end and start + 365 days (see
    docs/simulator.md); say so when processing *now* would already break that."""
    now = time.time()
    end_s = start_s + days * 86_400
    if now - start_s >= 365 * 86_400:
        print("simulate: warning: the first simulated days are more than 12 months before now; a "
              "worker processing this stream now drops records the truth counts as valid", file=sys.stderr)
    if end_s > now + 60:
        print("simulate: warning: the simulated days end in the future; a worker processing this "
              "stream now treats records the truth counts as valid as future ones", file=sys.stderr)


def _sink_url(args) -> str:
    if args.sink:
        return args.sink
    return f"kafka://{args.broker}" if args.broker else "file:-"


def default_start(days: int, today: date | None = None) -> date:
    today = today or datetime.now(timezone.utc).date()
    return today - timedelta(days=days)


def monday_start(days: int, today: date | None = None) -> date:
    """The latest Monday from which `days` simulated days end by today (UTC)."""
    start = default_start(days, today)
    return start - timedelta(days=start.weekday())


def run(args: argparse.Namespace) -> int:
    from .engine import SimConfig, Simulation
    from .faults import FaultRates
    from .sinks import open_sink
    from .truth import Truth

    if args.replay:
        return _run_replay(args)
    if args.tenants < 1 or args.vehicles < args.tenants or args.days < 1:
        print("simulate: need --tenants >= 1, --vehicles >= --tenants and --days >= 1", file=sys.stderr)
        return 2
    try:
        rates = FaultRates.build(args.faults, dict(args.fault))
    except ValueError as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    start = monday_start(args.days) if args.start == "monday" else args.start or default_start(args.days)
    start_s = int(datetime(start.year, start.month, start.day, tzinfo=timezone.utc).timestamp())
    _warn_about_the_clock(start_s, args.days)
    sink_url = _sink_url(args)
    transport = sink_url[:3] if sink_url.startswith(("tcp://", "udp://")) else (
        None if args.transport == "mixed" else args.transport)
    cfg = SimConfig(args.seed, args.tenants, args.vehicles, args.days, start_s, rates, transport)
    sim = Simulation(cfg, keep_packets=False)
    truth = Truth(sim.fleet, cfg)
    if args.write_policies:
        from .policies import write_policies
        write_policies(sim.fleet, truth, args.write_policies)
    to_stdout = sink_url in ("file:-", "file:")
    speed = 1.0 if args.realtime else args.speed
    bar = None
    # Signal handlers first: from the moment the sink exists, SIGTERM/SIGINT stop the
    # run cleanly (flush, truth of what was sent) instead of killing it.
    with _Stop() as stop:
        sink = open_sink(sink_url, topic=args.topic, timeout=args.timeout, attempts=args.attempts)
        if not args.quiet and not to_stdout and sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=cfg.days, unit="day", desc="simulate", leave=False)
        t_wall = time.perf_counter()
        t_first = None
        day_seen = 0
        try:
            for em in sim.emissions():
                if stop.signal is not None:
                    break
                if speed:
                    if t_first is None:
                        t_first = (em.received_at, time.monotonic())
                    due = t_first[1] + (em.received_at - t_first[0]) / 1000.0 / speed
                    while stop.signal is None and (delay := due - time.monotonic()) > 0:
                        time.sleep(min(delay, 0.2))
                    if stop.signal is not None:
                        break
                for e, fates in sink.send(em):
                    truth.add(e, fates)
                if bar is not None and sim.day != day_seen:
                    bar.update(sim.day - day_seen)
                    day_seen = sim.day
        finally:
            for e, fates in sink.close():
                truth.add(e, fates)
            if bar is not None:
                bar.close()
    elapsed = time.perf_counter() - t_wall
    truth.interrupted = stop.signal is not None
    meta = {"args": {k: (str(v) if isinstance(v, date) else v) for k, v in sorted(vars(args).items())
                     if not k.startswith("_") and k not in ("func",)},
            "sink": sink_url.split("://")[0] if "://" in sink_url else "file"}
    meta["args"]["start"] = start.isoformat()
    if getattr(sink, "stats", None):
        meta["sink_stats"] = dict(sink.stats)
    if args.truth:
        truth.write(args.truth, meta)
    summary = summarise(truth, sim, elapsed)
    if "sink_stats" in meta:
        summary["sink_stats"] = meta["sink_stats"]
    if args.json:
        print(json.dumps(summary), file=sys.stderr if to_stdout else sys.stdout)
    elif not args.quiet:
        print(format_summary(summary), file=sys.stderr if to_stdout else sys.stdout)
    return 130 if truth.interrupted and stop.signal == signal.SIGINT else 0


class _Stop:
    """SIGTERM/SIGINT set a flag; the send loop checks it between messages."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _set(self, signum, _frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _run_replay(args) -> int:
    from .replay import replay
    from .sinks import open_sink

    if args.truth or args.write_policies:
        print("simulate: --replay writes no truth or policies (use those of the run that wrote "
              "the file)", file=sys.stderr)
        return 2
    sink_url = _sink_url(args)
    sink = open_sink(sink_url, topic=args.topic, timeout=args.timeout, attempts=args.attempts)
    speed = 1.0 if args.realtime else args.speed
    n = {"messages": 0, "records": 0, "bytes": 0}
    t0, first = time.perf_counter(), None
    with _Stop() as stop:
        try:
            for em in replay(args.replay):
                if stop.signal is not None:
                    break
                if speed:
                    if first is None:
                        first = (em.received_at, time.monotonic())
                    due = first[1] + (em.received_at - first[0]) / 1000.0 / speed
                    while stop.signal is None and (delay := due - time.monotonic()) > 0:
                        time.sleep(min(delay, 0.2))
                for e, _ in sink.send(em):
                    n["messages"] += 1
                    n["records"] += e.n_records
                    n["bytes"] += len(e.frame)
        finally:
            for e, _ in sink.close():
                n["messages"] += 1
                n["records"] += e.n_records
                n["bytes"] += len(e.frame)
    elapsed = time.perf_counter() - t0
    summary = {**n, "seconds": round(elapsed, 3), "interrupted": stop.signal is not None,
               "records_per_s": round(n["records"] / elapsed) if elapsed > 0 else None}
    out = sys.stderr if sink_url in ("file:-", "file:") else sys.stdout
    if args.json:
        print(json.dumps(summary), file=out)
    elif not args.quiet:
        print(f"fleetcloak simulate --replay {args.replay}: {n['messages']:,} messages, "
              f"{n['records']:,} records, {n['bytes']:,} bytes in {elapsed:.2f} s "
              f"({summary['records_per_s'] or 0:,} records/s)"
              + ("  [INTERRUPTED]" if summary["interrupted"] else ""), file=out)
    return 130 if stop.signal == signal.SIGINT else 0


def summarise(truth, sim, elapsed: float) -> dict:
    from .truth import iso

    t = truth.totals
    cfg = sim.cfg
    return {
        "start": iso(cfg.start_ms)[:10], "days": cfg.days, "seed": cfg.seed,
        "tenants": len(sim.fleet.tenants), "vehicles": len(sim.fleet.vehicles),
        "drivers": len(sim.fleet.drivers),
        "messages": t.get("messages", 0), "records": t.get("records", 0), "bytes": t.get("bytes", 0),
        "fates": {f: t.get(f, 0) for f in ("valid", "corrupt", "too_old", "future", "duplicate",
                                           "unknown_device", "unacked", "rejected", "undelivered") if t.get(f, 0) or f == "valid"},
        "faults": dict(sorted(truth.faults.items())),
        "seconds": round(elapsed, 3),
        "records_per_s": round(t.get("records", 0) / elapsed) if elapsed > 0 else None,
        "interrupted": truth.interrupted,
    }


def format_summary(s: dict) -> str:
    lines = [
        f"fleetcloak simulate: {s['tenants']} tenants, {s['vehicles']} vehicles, {s['drivers']} drivers, "
        f"{s['days']} day(s) from {s['start']}, seed {s['seed']}"
        + ("  [INTERRUPTED]" if s["interrupted"] else ""),
        f"  sent      {s['messages']:>10,} messages  {s['records']:>11,} records  {s['bytes']:>13,} bytes",
        "  fates     " + "  ".join(f"{k} {v:,}" for k, v in s["fates"].items()),
        "  faults    " + ("  ".join(f"{k} {v:,}" for k, v in s["faults"].items()) or "none"),
        f"  time      {s['seconds']:.2f} s  ({s['records_per_s'] or 0:,} records/s)",
    ]
    if s.get("sink_stats"):
        lines.append("  devices   " + "  ".join(f"{k} {v:,}" for k, v in s["sink_stats"].items()))
    return "\n".join(lines)

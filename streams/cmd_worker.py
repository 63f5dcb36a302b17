"""`fleetcloak worker --broker HOST:PORT`: run the stream worker (streams/app.py)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from fleetcloak.streams.cli_args import add_broker
from fleetcloak.streams.recordbatch import COMPRESSIONS
from fleetcloak.streams.topics import RAW

# The pipeline the worker runs unless --pipeline says otherwise: `module:callable`, where
# callable() returns a PipelineFactory (streams/seam.py) -- the real one is decode ->
# registry -> gates -> routes. `passthrough` copies raw messages unchanged to one topic:
# a fixture for delivery tests and benches, never a default (it forwards raw identifiers).
DEFAULT_PIPELINE = os.environ.get("FLEETCLOAK_PIPELINE", "fleetcloak.streams.pipeline:worker_factory")


def add_arguments(p) -> None:
    add_broker(p)
    p.add_argument("--group", default="fleetcloak-worker", help="consumer group (default fleetcloak-worker)")
    p.add_argument("--input-topic", default=RAW, help=f"topic to consume (default {RAW})")
    p.add_argument("--metrics-port", type=int, default=6066, help="HTTP port for /health and /metrics (default 6066)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address to bind the HTTP server to")
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help="`passthrough`, or module:callable returning a PipelineFactory (see streams/seam.py)")
    p.add_argument("--passthrough-topic", default="fleetcloak.passthrough", help="output topic of the passthrough pipeline")
    p.add_argument("--max-records", type=int, default=8_000, help="max raw messages per batch (LoopSettings.max_records)")
    p.add_argument("--producers", type=_positive, default=4, metavar="N",
                   help="producers (connections) the output partitions are spread over (default 4)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="lz4",
                   help="codec of the output record batches (default lz4: a fifth of the bytes for the broker; "
                        "consumers need a client with that codec, as every Kafka client has)")
    p.add_argument("--session-timeout-ms", type=int, default=10_000,
                   help="consumer group session timeout: how long a dead worker holds its partitions (default 10000)")
    p.add_argument("--raw-partitions", type=int, default=4, help="partitions of telematics.raw if the worker creates it")
    p.add_argument("--until-drained", action="store_true",
                   help="exit 0 once every assigned partition is processed up to its high-watermark (demo, batch runs)")
    p.add_argument("--summary-json", metavar="FILE", help="write the run's accounting to FILE as JSON at exit")
    p.add_argument("--pipeline-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the pipeline in a child process that works while this one does Kafka I/O, on two "
                        "cores (the default); --no-pipeline-process runs it in the delivery loop's process")
    p.add_argument("--no-control-plane", action="store_true", help="do not read the control topics (benches only)")
    p.add_argument("-l", "--loglevel", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level (explicit: Faust's default is DEBUG behind a spinner)")


def resolve_factory(spec: str, passthrough_topic: str):
    from fleetcloak.streams.seam import passthrough_factory

    if spec == "passthrough":
        return passthrough_factory(passthrough_topic)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--pipeline must be `passthrough` or module:callable, got {spec!r}")
    try:
        maker = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"fleetcloak worker: pipeline {spec} is not available ({exc})") from exc
    return maker()


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def run(args) -> int:
    from fleetcloak.streams.app import WorkerSettings, run_worker
    from fleetcloak.streams.loop import LoopSettings

    factory = resolve_factory(args.pipeline, args.passthrough_topic)
    notice = None
    if args.pipeline == "passthrough":
        notice = (f"running the PASSTHROUGH pipeline: raw messages are copied unchanged to {args.passthrough_topic} "
                  "(delivery tests and benches only; it forwards raw identifiers)")
        print(f"fleetcloak worker: {notice}", file=sys.stderr)
    settings = WorkerSettings(
        loop=LoopSettings(args.broker, input_topic=args.input_topic, group_id=args.group, max_records=args.max_records,
                          session_timeout_ms=args.session_timeout_ms, stop_when_drained=args.until_drained,
                          heartbeat_interval_ms=max(args.session_timeout_ms // 5, 500),
                          pipeline_process=args.pipeline_process, producer_connections=args.producers,
                          compression=args.compression),
        web_port=args.metrics_port, web_host=args.metrics_host,
        control_plane=not args.no_control_plane, raw_partitions=args.raw_partitions, notice=notice,
        summary_path=args.summary_json,
    )
    return run_worker(settings, factory, loglevel=args.loglevel)

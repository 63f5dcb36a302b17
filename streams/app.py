"""The worker: a Faust app around the batched delivery loop.

What Faust does here: the app and worker lifecycle (start-up order, signal handling,
explicit log level, clean shutdown), and its web server (aiohttp) for `/health` and
`/metrics`. What it does not do: consume or produce. Its per-event Stream costs ~10x
a plain aiokafka loop (CONVENTIONS §8), acks events whose processing raised, and its
tables recover with ListOffsets, which Tansu answers wrong. So the app boots with
Kafka disabled (no Faust consumer, producer, conductor or tables: no extra group
join, no internal topics) and runs `DeliveryService`, a mode Service that owns the
control-plane reader and the BatchLoop (streams/loop.py).

Why Faust's web server and not prometheus-client's own: it answers from the event
loop that runs the delivery loop, so a health probe that gets an answer proves the
loop is not wedged, and it is one server on one port for both endpoints. Scraping
costs a few hundred microseconds of that loop per scrape.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import tempfile
from dataclasses import dataclass, field

import faust
from faust.app.base import BootStrategy
from mode import Service

from fleetcloak.streams.control import ControlPlane
from fleetcloak.streams.loop import BatchLoop, LoopSettings, WorkerFailed
from fleetcloak.streams.metrics import CONTENT_TYPE_LATEST, WorkerMetrics
from fleetcloak.streams.seam import PipelineFactory
from fleetcloak.streams.topics import core_topics, ensure_topics

log = logging.getLogger("fleetcloak.worker")


class _NoKafkaBoot(BootStrategy):
    """Faust without its Kafka machinery: the hot path is ours (streams/loop.py)."""
    enable_kafka = False
    enable_web = True
    enable_sensors = False


@dataclass
class WorkerSettings:
    loop: LoopSettings
    web_port: int = 6066
    web_host: str = "0.0.0.0"
    control_plane: bool = True     # read fleetcloak.policies/keys/subjects (off only for benches)
    create_core_topics: bool = True
    raw_partitions: int = 4
    notice: str | None = None      # logged as a warning at start (e.g. "passthrough pipeline")
    summary_path: str | None = None  # write the run's accounting here as JSON at exit (demo, benches)
    datadir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="fleetcloak-worker-"))


async def _warn_about_broker_gaps(admin) -> None:
    """Say it, never degrade silently: on the embedded broker some Kafka guarantees
    this deployment relies on are not there (README, "Where the embedded broker differs")."""
    from fleetcloak.streams.broker import TANSU_GAPS, is_tansu

    try:
        cluster_id = (await admin.describe_cluster()).get("cluster_id")
    except Exception as exc:  # an old broker without DescribeCluster: say what we could not check
        log.warning("could not identify the broker (%r); assuming Apache Kafka", exc)
        return
    if is_tansu(cluster_id):
        log.warning("running on the embedded broker (Tansu): %s. Use Apache Kafka in production "
                    "(docker-compose.yml).", TANSU_GAPS)


class DeliveryService(Service):
    """Starts the control plane, then runs the BatchLoop until stopped or failed."""

    def __init__(self, settings: WorkerSettings, factory: PipelineFactory, metrics: WorkerMetrics,
                 on_finish=None, **kwargs) -> None:
        self.settings = settings
        self.factory = factory
        self.metrics = metrics
        self.on_finish = on_finish  # called with the failure (or None) once the loop has ended
        self.control: ControlPlane | None = None
        self.batch_loop: BatchLoop | None = None
        self.failure: BaseException | None = None
        self._task: asyncio.Task | None = None
        self.duties = None
        self._duties_task: asyncio.Task | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        s = self.settings
        if s.notice:
            log.warning("%s", s.notice)
        if s.create_core_topics:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=s.loop.bootstrap, client_id=s.loop.client_id)
            await admin.start()
            try:
                # A custom input topic (tests, benches) is created by whoever names it.
                await ensure_topics(admin, core_topics(raw_partitions=s.raw_partitions))
                await _warn_about_broker_gaps(admin)
            finally:
                await admin.close()
        if s.control_plane:
            self.control = ControlPlane(s.loop.bootstrap)
            await self.control.start()
        master = getattr(self.factory, "master", None)  # the telemetry pipeline's; not the passthrough's
        if master is not None:
            from fleetcloak.streams.retention import RetentionDuties, startup_guard

            # Refuse to run against a telemetry topic kept longer than its tenant's window.
            await startup_guard(s.loop.bootstrap)
            self.duties = RetentionDuties(s.loop.bootstrap, master)
            self.metrics.listeners.append(lambda counts: self.duties.drops.add(counts.dropped))
        self.batch_loop = BatchLoop(s.loop, self.factory, control=self.control, metrics=self.metrics)

    async def on_started(self) -> None:
        # What startup built (Faust, aiohttp, the policies: ~90,000 objects) lives as long
        # as the worker: out of the cyclic collector's sight, so a full collection walks
        # what the batches left only (measured over a bench run's streaming: GC 0.20-0.27 s
        # -> ~0.13 s, its full collections ~0.1 s -> ~0.03 s).
        gc.collect()
        gc.freeze()
        self._task = asyncio.create_task(self._run(), name="delivery-loop")
        if self.duties is not None:  # audited drop counts, epoch expiry, subject housekeeping
            self._duties_task = asyncio.create_task(self.duties.run(), name="retention-duties")

    async def _run(self) -> None:
        try:
            await self.batch_loop.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            if isinstance(exc, WorkerFailed):
                log.error("worker stopping WITHOUT committing the batch in hand: %s", exc)
            else:
                log.exception("worker stopping WITHOUT committing the batch in hand")
        finally:
            if self.on_finish:
                self.on_finish(self.failure)

    async def on_stop(self) -> None:
        if self.batch_loop is not None:
            self.batch_loop.request_stop()  # finish and commit the batch in hand
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except BaseException:
                pass
        if self.duties is not None and self._duties_task is not None:
            self.duties.stop()  # flushes the last drop counts to the audit trail
            try:
                await asyncio.wait_for(self._duties_task, timeout=10)
            except BaseException as exc:
                log.error("retention duties did not stop cleanly: %r", exc)
        if self.control is not None:
            await self.control.stop()

    @property
    def healthy(self) -> bool:
        return (self._task is not None and not self._task.done() and self.batch_loop is not None
                and self.batch_loop.started_at is not None)


def make_app(settings: WorkerSettings, service_ref: dict) -> faust.App:
    app = faust.App(
        "fleetcloak-worker",
        broker=f"kafka://{settings.loop.bootstrap}",
        web_enabled=True, web_port=settings.web_port, web_bind=settings.web_host,
        web_host=settings.web_host,
        datadir=settings.datadir, autodiscover=False,
        key_serializer="raw", value_serializer="raw",
    )
    app.boot_strategy = _NoKafkaBoot(app)

    @app.page("/metrics")
    async def metrics(web, request):
        svc: DeliveryService = service_ref["service"]
        return web.bytes(svc.metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(web, request):
        svc: DeliveryService = service_ref["service"]
        loop = svc.batch_loop
        body = {
            "status": "ok" if svc.healthy else ("failed" if svc.failure else "starting"),
            "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in (loop._owned if loop else ())),
            "consumed": loop.consumed if loop else 0,
            "lag": sum(loop.lag.values()) if loop else None,
            "control_version": svc.control.version if svc.control else None,
        }
        return web.json(body, status=200 if svc.healthy else 503)

    return app


class QuietWorker(faust.Worker):
    """faust.Worker without its terminal spinner. At -l warning or error Faust sets the
    root logger to DEBUG and adds a spinner handler that sees every record: every debug
    call of aiokafka, Faust and mode in the hot path then built a LogRecord (measured:
    ~2 % of a worker at -l warning). Without the spinner the root logger keeps the level
    asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None


def run_worker(settings: WorkerSettings, factory: PipelineFactory, loglevel: str = "info") -> int:
    """Run the worker until SIGTERM/SIGINT (exit 0, last batch committed) or a failure
    (exit 1, last batch not committed)."""
    metrics = WorkerMetrics()
    ref: dict = {}
    app = make_app(settings, ref)
    worker_ref: dict = {}

    def on_finish(failure: BaseException | None) -> None:
        # The loop ended on its own (failure): take the whole worker down.
        worker = worker_ref["worker"]
        if not worker.should_stop:
            asyncio.ensure_future(worker.stop())

    service = DeliveryService(settings, factory, metrics, on_finish=on_finish)
    ref["service"] = service
    worker = QuietWorker(app, service, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          workdir=settings.datadir)
    worker_ref["worker"] = worker
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - execute_from_commandline always exits
        code = 0
    if settings.summary_path:
        write_summary(settings.summary_path, metrics.totals, service.batch_loop, failed=service.failure is not None)
    if service.failure is not None:
        return 1
    return code


def write_summary(path: str, totals, batch_loop, *, failed: bool) -> None:
    """The run's accounting as JSON (labels joined with "/"), for scripts and the demo."""
    def flat(counter) -> dict:
        return {("/".join(k) if isinstance(k, tuple) else str(k)): v for k, v in counter.items()}

    body = {
        "received": totals.received, "forwarded": flat(totals.forwarded),
        "deadlettered": flat(totals.deadlettered), "dropped": flat(totals.dropped),
        "copies": flat(totals.copies), "analytics_skipped": flat(totals.skipped),
        "balanced": totals.balanced(), "failed": failed,
        "consumed": getattr(batch_loop, "consumed", 0), "produced": getattr(batch_loop, "produced", 0),
        "busy_s": getattr(batch_loop, "busy", 0.0),
        "stream_s": getattr(batch_loop, "stream_seconds", None),
    }
    with open(path, "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)

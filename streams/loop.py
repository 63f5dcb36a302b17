"""The batched at-least-once delivery loop.

    getmany(n) ─▶ await the result of n-1 ─▶ start processing n
               ─▶ await delivery of n-2, commit n-2 ─▶ produce every output of n-1
               ─▶ getmany(n+1) ...

A source offset is committed only after every output of its batch has been
acknowledged by the broker (acks=all). Batches are pipelined: batch n is processed
while batch n-1's outputs are acknowledged by the broker. Producing hands the batches
to the producers and returns (`_PartitionFeeds`: in order per partition, partitions
spread over several producers); each partition's record batches are built and
compressed (lz4 by default, LoopSettings.compression) in an encoding thread, whose C
and codec work runs without the GIL, while this thread goes on with the pipeline. With
the pipeline in the loop (LoopSettings' default) it is processed in steps, the event loop turning
between them, so n-1's outputs go out round after round and n+1 is fetched meanwhile;
with the pipeline in a child process (streams/runner.py, the worker command's default) the child
processes n while this process produces n-1 and fetches n+1, on two cores, and n+1 is
queued to the child before n is done.
Commits stay in batch order. Anything else stops the loop *without* committing: an exception from `process` (a bug: Faust would ack and skip it), a failed
delivery (Faust's flush() would not even raise), a dead control-plane reader, a dead
pipeline process. The batch in flight before a failed `process` is still delivered and
committed (its outputs were produced before the failure); the failed batch and anything
after it stay uncommitted and are redelivered to whoever owns their partition next (no
batch is produced before the one before it has processed without error). Duplicates are
possible, losses are not; every output carries a deterministic `record_id` (the
pipeline's job) so consumers can drop the duplicates.

Rebalances: each step of the loop holds `_batch_lock`; `on_partitions_revoked` takes it
and settles everything started first (awaits the batch being processed, produces its
outputs, delivers and commits both it and the batch in flight), so every batch whose
processing started is delivered and committed while this member still owns its
partitions (the commit of the old generation is accepted until the
group moves on). Records fetched for a partition that was revoked before their batch
started are dropped unprocessed and uncommitted. Control changes apply between batches:
when no batch is being processed, or, in the child, as a request queued between two.
A commit refused because the group already moved on is not an error: the outputs are
delivered, the new owner redelivers the records, consumers see duplicates.

This module knows nothing of telematics: see streams/seam.py for the pipeline seam.
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from fleetcloak.streams.fetch import use_fast_fetch
from fleetcloak.streams.metrics import WorkerMetrics, summary_line
from fleetcloak.streams.produce_encoding import use_flat_produce_encoding
from fleetcloak.streams.partitioner import EncodedBlock, Partitioner, join_by_topic
from fleetcloak.streams.recordbatch import COMPRESSIONS, RecordTooLarge, build_batches, compress_batches
from fleetcloak.streams.runner import Built, ChildRunner, InLoopRunner, PipelineError, Started, turn_event_loop
from fleetcloak.streams.seam import ControlSnapshot, OutputBlock, PipelineFactory, ProcessResult
from fleetcloak.streams.topics import RAW

log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """The loop stopped without committing the batch in hand."""


class PipelineFailed(WorkerFailed):
    pass


class DeliveryFailed(WorkerFailed):
    pass


_FETCHER_TURNS = 4  # its routine wakes, builds the requests, a task per node sends them

@dataclass
class LoopSettings:
    bootstrap: str
    input_topic: str = RAW
    group_id: str = "fleetcloak-worker"
    client_id: str = "fleetcloak-worker"
    # per batch: its CPU far under the 3 s heartbeat, and the last batch of a burst (processed
    # and delivered with nothing to overlap) short. 8,000 against 20,000: +3.6 %, +6.6 %,
    # +5.4 % msgs/s in three A/Bs of alternating bench runs (medians of 5-6); 5,000 no better.
    max_records: int = 8_000
    poll_timeout_ms: int = 200          # how soon a stop request is noticed when idle
    # aiokafka keeps one fetch per broker in flight: one that asks only for partitions
    # with nothing new is answered after fetch_max_wait_ms, and partitions with data
    # wait behind it (500 ms by default: stalls of ~0.35 s seen at the end of a
    # partition). A partition's fetch holds a whole batch of raw messages (8,000 x ~400 B;
    # aiokafka's 1 MiB held ~2,600, so a worker owning one partition ran 2,600-message batches).
    # Fetched data waits in the consumer up to that much per owned partition (fetch_max_bytes,
    # aiokafka's 50 MiB, caps one answer).
    fetch_max_wait_ms: int = 100
    max_partition_fetch_bytes: int = 4 << 20
    linger_ms: int = 5
    producer_connections: int = 4       # producers the output partitions are spread over (_PartitionFeeds)
    producer_batch_bytes: int = 1 << 20  # per (topic, partition) batch; aiokafka's 16 KB is 16 msgs of 1 KB
    create_topics: bool = True          # create the pipeline's missing output topics with their settings
    stop_when_drained: bool = False     # return once every owned partition is processed up to its high-watermark
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    pipeline_process: bool = False     # run the pipeline in a child process (streams/runner.py)
    compression: str = "lz4"           # of the output batches (recordbatch.COMPRESSIONS); "none" to turn off

    def __post_init__(self) -> None:
        if self.producer_connections < 1:
            raise ValueError(f"LoopSettings.producer_connections must be at least 1, got {self.producer_connections}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"LoopSettings.compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")


async def await_delivery(futures: list) -> None:
    """Wait for every delivery future; DeliveryFailed if any output was not acknowledged."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise DeliveryFailed(f"{len(errors)} of {len(futures)} output batches were not delivered: {errors[0]!r}")


@dataclass
class _InProcess:
    """A batch handed to the pipeline runner: being processed, not yet produced."""

    work: Started         # its result, when ready
    consumed: int
    last: dict            # TopicPartition -> last offset of the batch
    started: float        # perf_counter when it was started


@dataclass
class _InFlight:
    """A batch whose outputs are produced, awaiting acknowledgement and then its commit."""

    consumed: int
    produced: int
    counts: object
    last: dict            # TopicPartition -> last offset of the batch
    futures: list         # delivery futures of its producer batches
    started: float        # perf_counter when its processing began
    failed: bool = False


def _fmt_tps(tps) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "-"


async def _leave_generation_zero(consumer) -> None:
    """Send LeaveGroup for a member of generation 0, which aiokafka skips.

    Tansu numbers a group's first generation 0 where Kafka starts at 1, and aiokafka only
    leaves a group when generation > 0: without this, the first worker of a group that
    stops holds its partitions until its session times out. Uses aiokafka internals, so
    it is best effort and logged when it cannot run.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0 or not coordinator.member_id:
        return
    try:
        from aiokafka.protocol.group import LeaveGroupRequest

        await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
        log.info("left group %s (generation 0)", coordinator.group_id)
    except Exception as exc:
        log.warning("could not leave group generation 0 (partitions move after the session timeout): %r", exc)


class _PartitionFeeds:
    """Record batches handed to the producer in order per partition, without waiting.

    aiokafka's `send_batch` returns only once the partition has no batch pending (the
    sender keeps one request per broker in flight and one batch per partition in a
    request), so sending a batch's outputs inline waits out every round trip but the
    last while the pipeline could be working. Here each (topic, partition) has a chain
    of tasks: `send` returns the delivery futures at once, and a task per call hands its
    batches over after the ones queued before it for that partition, in order.

    Partitions are spread over several producers (each its own connection, its own
    request in flight): a partition always goes through the same one, so its batches
    stay in order; the broker works on several requests at once.
    """

    def __init__(self, producers: list[AIOKafkaProducer]) -> None:
        self._producers = producers
        self._tails: dict[tuple[str, int], asyncio.Task] = {}
        self._live: set[asyncio.Task] = set()

    def send(self, topic: str, partition: int, batches) -> list[asyncio.Future]:
        """Delivery futures for `batches`, handed to the producer after the ones queued
        before for this partition: a list (a future each), or an awaitable giving the
        list (being encoded in a thread meanwhile; one future for all of them)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in batches] if isinstance(batches, list) else [loop.create_future()]
        key = (topic, partition)
        producer = self._producers[(zlib.crc32(topic.encode()) + partition) % len(self._producers)]
        task = loop.create_task(self._feed(self._tails.get(key), producer, topic, partition, batches, futures))
        self._tails[key] = task
        self._live.add(task)
        task.add_done_callback(lambda t: self._done(key, t))
        return futures

    def _done(self, key: tuple[str, int], task: asyncio.Task) -> None:
        self._live.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]

    async def cancel(self) -> None:
        """Stop handing batches over (the loop is stopping without settling them): their
        futures fail; batches the producer already has are its to deliver or fail."""
        tasks = list(self._live)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _feed(before: asyncio.Task | None, producer: AIOKafkaProducer, topic: str, partition: int,
                    batches, futures: list[asyncio.Future]) -> None:
        sent = 0
        try:
            if before is not None and not before.done():
                await asyncio.wait([before])
            if not isinstance(batches, list):  # one future for the batches it gives
                deliveries = [await producer.send_batch(batch, topic, partition=partition) for batch in await batches]
                gathered = asyncio.gather(*deliveries)
                gathered.add_done_callback(lambda d, f=futures[0]: _settle_future(f, d))
                return
            for batch, future in zip(batches, futures):
                delivery = await producer.send_batch(batch, topic, partition=partition)
                delivery.add_done_callback(lambda d, f=future: _settle_future(f, d))
                sent += 1
        except BaseException as exc:  # the producer failed or closed, or the loop is going away
            failure = exc if isinstance(exc, Exception) else DeliveryFailed(f"sending to {topic} cancelled")
            for future in futures[sent:]:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise


def _encode_part(topic: str, keys: list, values: list, timestamp_ms: int, max_bytes: int, rows,
                 compression: str) -> list:
    try:
        return build_batches(keys, values, timestamp_ms, max_bytes, rows, compression)
    except RecordTooLarge as exc:
        raise DeliveryFailed(f"an output message for {topic} is larger than a producer batch "
                             f"({exc.size} > {max_bytes} bytes)") from exc


def _settle_future(future: asyncio.Future, delivery: asyncio.Future) -> None:
    if future.done():
        return
    if delivery.cancelled():
        future.set_exception(DeliveryFailed("delivery cancelled"))
    elif delivery.exception() is not None:
        future.set_exception(delivery.exception())
    else:
        future.set_result(delivery.result())


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: "BatchLoop") -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked) -> None:
        # Wait for the batch being processed and deliver and commit the one in flight:
        # both are committed before we let go.
        async with self._loop._batch_lock:
            try:
                await self._loop._settle()
            except BaseException as exc:
                # aiokafka logs and swallows a listener's exception: the loop raises it
                self._loop._listener_failure = exc
                raise
            self._loop._owned.difference_update(revoked)
            for tp in revoked:
                self._loop._forget_lag(tp)
        if revoked:
            log.info("partitions revoked: %s", _fmt_tps(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        self._loop._owned = set(assigned)
        log.info("partitions assigned: %s", _fmt_tps(assigned))
        self._loop.assigned.set()


class BatchLoop:
    """Consume -> process -> produce -> await delivery -> commit, one batch at a time.

    `run()` returns when `request_stop()` was called (after finishing and committing the
    current batch) and raises WorkerFailed when it had to stop without committing.
    """

    def __init__(self, settings: LoopSettings, factory: PipelineFactory, *,
                 control=None, metrics: WorkerMetrics | None = None,
                 on_started: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.control = control      # ControlPlane or None (an empty snapshot then)
        self.metrics = metrics or WorkerMetrics()
        self.on_started = on_started
        self._runner = ChildRunner(factory) if settings.pipeline_process else InLoopRunner(factory)
        self.pipeline: Built | None = None  # what the runner's pipeline needs: its topics, its description
        self._in_process: _InProcess | None = None  # handed to the runner, not yet produced
        self._listener_failure: BaseException | None = None
        self.assigned = asyncio.Event()
        self._owned: set[TopicPartition] = set()
        self._batch_lock = asyncio.Lock()
        self._in_flight: _InFlight | None = None  # produced, not yet acknowledged and committed
        self._stopping = False
        self._rebuild = True                 # build before the first batch
        self._changed: set[str] = set()      # control roles changed since the last build/refresh
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None   # the first of _producers: metadata, single messages
        self._producers: list[AIOKafkaProducer] = []
        self._feeds: _PartitionFeeds | None = None
        self._encoder: ThreadPoolExecutor | None = None  # builds and compresses the output batches
        self._partitions: dict[str, list[int]] = {}
        self._partitioner = Partitioner()
        self._lag_labels: set[tuple[str, str]] = set()
        self.lag: dict[TopicPartition, int] = {}  # as of each partition's last batch
        self.consumed = 0
        self.produced = 0
        self.busy = 0.0  # seconds spent in steps and settles (process + produce + deliver + commit)
        self.first_batch_at: float | None = None  # perf_counter: the first fetched batch in hand
        self.last_commit_at: float | None = None  # perf_counter: the last batch committed
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        if control is not None:
            control.subscribe(self._on_control_change)

    # --- lifecycle ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, and return from run()."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def stream_seconds(self) -> float | None:
        """From the first fetched batch in hand to the last commit: the time the messages
        took to stream through (startup and group join excluded; fetch waits between
        batches included). None before a batch was committed."""
        if self.first_batch_at is None or self.last_commit_at is None:
            return None
        return self.last_commit_at - self.first_batch_at

    def _on_control_change(self, role: str) -> None:
        self._changed.add(role)

    async def run(self) -> None:
        s = self.settings
        self._producers = [AIOKafkaProducer(
            bootstrap_servers=s.bootstrap, client_id=s.client_id,
            acks="all",                 # acks=0/1 would ack before the data is safe (and acks=0 breaks on Tansu)
            enable_idempotence=False,   # Tansu has no idempotent producer; duplicates are handled by record_id
            linger_ms=s.linger_ms, max_batch_size=s.producer_batch_bytes,
            compression_type=None if s.compression == "none" else s.compression,  # the single messages
            max_request_size=max(s.producer_batch_bytes, 1 << 20) + (64 << 10),
        ) for _ in range(s.producer_connections)]
        self._producer = self._producers[0]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, client_id=s.client_id, group_id=s.group_id,
            enable_auto_commit=False,   # we commit, after delivery
            auto_offset_reset="earliest",  # a new group starts at the oldest raw record, not "now"
            session_timeout_ms=s.session_timeout_ms, heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=s.fetch_max_wait_ms, max_partition_fetch_bytes=s.max_partition_fetch_bytes,
        )
        failure: BaseException | None = None
        try:
            use_flat_produce_encoding()  # produce requests joined once (streams/produce_encoding.py)
            for producer in self._producers:
                await producer.start()
            await self._build_pipeline()
            await self._consumer.start()
            use_fast_fetch(self._consumer)  # fetched batches read in C (streams/fetch.py)
            self._consumer.subscribe([s.input_topic], listener=_Rebalance(self))
            self.started_at = time.monotonic()
            self.metrics.up.set(1)
            if self.on_started:
                self.on_started()
            await self._loop()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.metrics.up.set(0)
            self.stopped_at = time.monotonic()
            await self._close(failure)

    async def _close(self, failure: BaseException | None) -> None:
        # No commit here, ever: commits happen only after a delivered batch. (Auto-commit is
        # off, so stopping the consumer leaves the group without committing.)
        if self._consumer is not None:
            await _leave_generation_zero(self._consumer)
        if self._feeds is not None:
            await self._feeds.cancel()
        if self._encoder is not None:
            self._encoder.shutdown(wait=True, cancel_futures=True)
        for client in (self._consumer, *self._all_producers(), self._runner):
            if client is None:
                continue
            try:
                await client.stop()
            except Exception as exc:  # closing must not hide the failure that got us here
                log.warning("closing %s failed: %r", type(client).__name__, exc)
        if self.started_at is not None:
            seconds = (self.stopped_at or time.monotonic()) - self.started_at
            level = logging.ERROR if failure is not None and not isinstance(failure, asyncio.CancelledError) else logging.INFO
            log.log(level, "%s%s", summary_line(self.metrics.totals, self.consumed, self.produced, seconds, self.busy),
                    f" (stopped by {type(failure).__name__}, last batch NOT committed)" if failure else "")

    # --- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        consumer = self._consumer
        try:
            while not self._stopping:
                if self.control is not None and (err := self.control.failed()) is not None:
                    raise WorkerFailed(f"control-plane reader failed: {err!r}") from err
                if self._listener_failure is not None:
                    raise WorkerFailed(f"settling before a rebalance failed: {self._listener_failure!r}") \
                        from self._listener_failure
                # getmany() waits through a rebalance without a timeout (seconds on
                # Tansu); the step after it applies any control change (an erasure) that
                # arrived.
                batch = await self._fetch(consumer)
                if self._stopping:  # fetched but not started: leave it uncommitted
                    break
                if batch:
                    # A few turns of the event loop, so aiokafka's fetcher sends the requests
                    # for the partitions just drained before the pipeline holds the CPU: the
                    # broker assembles the next batch while this one is processed (measured:
                    # the worker had sat ~10 % idle in select; +12 % msgs/s, median of 4).
                    await turn_event_loop(_FETCHER_TURNS)
                async with self._batch_lock:
                    await self._step(batch)
                if not batch and self._in_process is None and self._in_flight is None \
                        and self.settings.stop_when_drained and await self.drained():
                    log.info("input drained up to the high-watermark of %s: stopping", _fmt_tps(self._owned))
                    break
        except BaseException as exc:
            # A failed process() or a dead control plane: the batch in flight was produced
            # before the failure, deliver and commit it; a failed delivery is not retried.
            if (self._in_flight is not None and not self._in_flight.failed
                    and not isinstance(exc, asyncio.CancelledError)):
                try:
                    async with self._batch_lock:
                        await self._finish_in_flight()
                except Exception as settle:
                    log.error("the batch in flight could not be settled after a failure: %s", type(settle).__name__)
            raise
        async with self._batch_lock:
            await self._settle()

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict:
        """The next fetched batch, waited for (up to poll_timeout_ms) only until something
        else is due: {} as soon as the batch being processed elsewhere is answered (its
        outputs go out at once, not after the fetch) or, with none being processed, the
        batch in flight is acknowledged (it is committed). While a batch is processed
        elsewhere, the next one is queued behind it as soon as it is fetched; a batch
        processed here (ready) is produced without waiting."""
        s, flight = self._in_process, self._in_flight
        if s is not None:
            due = s.work.answered() if s.work.working else None
        else:
            due = asyncio.wait(flight.futures) if flight is not None and flight.futures else None
        wait = due is not None or (s is None and flight is None)
        fetch = consumer.getmany(timeout_ms=self.settings.poll_timeout_ms if wait else 0,
                                 max_records=self.settings.max_records)
        if due is None:
            return await fetch
        fetching, other = asyncio.ensure_future(fetch), asyncio.ensure_future(due)
        try:
            await asyncio.wait((fetching, other), return_when=asyncio.FIRST_COMPLETED)
        finally:
            other.cancel()  # asyncio.wait: the futures it watched are left alone
            if not fetching.done():
                fetching.cancel()  # while it waits for data: it has taken none
                await asyncio.wait((fetching,))
        return {} if fetching.cancelled() else fetching.result()

    async def _step(self, batch: dict) -> None:
        """One turn: wait for the batch being processed, apply control changes, start the
        new batch, then deliver and commit the oldest and produce the one just done."""
        t0 = time.perf_counter()
        messages, last = self._take(batch)
        prepared = self._runner.prepare(messages) if messages else None  # while the pipeline works
        queued = control = None
        if messages and self._in_process is not None and self._runner.queues:
            # Queued behind the batch being processed, so the pipeline goes on to it at once;
            # a pending control change is queued between the two, so it still applies from
            # the new batch on.
            if self._rebuild or self._changed:
                control = self._start_control_change()
            queued = self._runner.start(prepared)
        done = await self._wait_processed()
        if control is not None:
            await self._finish_control_change(*control)
        elif (self._rebuild or self._changed) and queued is None:  # between batches: none is being processed
            await self._apply_control_changes()
        if messages:
            if self.first_batch_at is None:
                self.first_batch_at = t0
            work = queued if queued is not None else self._runner.start(prepared)
            self._in_process = _InProcess(work, len(messages), last, t0)
        if done is not None:
            await self._produce_result(done, done.work.result())
        elif not messages:  # the input paused: settle the batch in flight now
            await self._finish_in_flight()
        self.busy += time.perf_counter() - t0

    def _take(self, batch: dict) -> tuple[list, dict]:
        """The fetched messages of partitions still owned, and each partition's last offset."""
        messages = []
        last: dict[TopicPartition, int] = {}
        dropped = 0
        for tp, records in batch.items():
            if tp not in self._owned:  # revoked between fetch and now: not ours to process
                dropped += len(records)
                continue
            messages.extend(records)
            last[tp] = records[-1].offset
        if dropped:
            self.metrics.revoked_dropped.inc(dropped)
            log.info("left %d fetched records of revoked partitions unprocessed", dropped)
        return messages, last

    async def _wait_processed(self) -> _InProcess | None:
        """Wait until the batch being processed is done (PipelineFailed if it failed): it
        is returned, its result ready to decode, and the runner is free. None if none."""
        s = self._in_process
        if s is None:
            return None
        self._in_process = None
        try:
            await s.work.ready()
        except PipelineError as exc:
            raise PipelineFailed(f"process() raised {exc.blame} on a batch of {s.consumed} messages") from exc
        return s

    async def _produce_result(self, s: _InProcess, result: ProcessResult) -> None:
        """Deliver and commit the batch in flight, then produce `result`'s outputs: it is in flight."""
        await self._finish_in_flight()
        self._in_flight = _InFlight(s.consumed, len(result), result.counts, s.last, await self._produce(result), s.started)

    async def _settle(self) -> None:
        """Finish everything started: the batch being processed is produced, then it and the
        batch in flight are delivered and committed."""
        t0 = time.perf_counter()
        done = await self._wait_processed()
        if done is not None:
            await self._produce_result(done, done.work.result())
        await self._finish_in_flight()
        self.busy += time.perf_counter() - t0

    async def drained(self) -> bool:
        """Every owned partition processed up to its high-watermark (not end_offsets(): wrong
        on Tansu). False while unassigned or before the first fetch answered."""
        if not self._owned:
            return False
        for tp in list(self._owned):
            hw = self._consumer.highwater(tp)
            if hw is None or await self._consumer.position(tp) < hw:
                return False
        return True

    async def _finish_in_flight(self) -> None:
        """Await every output of the batch in flight, then commit its offsets."""
        b = self._in_flight
        if b is None:
            return
        b.failed = True  # until it is settled: never settle a batch twice
        await await_delivery(b.futures)
        self._in_flight = None
        self.consumed += b.consumed
        self.produced += b.produced
        self.metrics.messages_consumed.inc(b.consumed)
        self.metrics.messages_produced.inc(b.produced)
        if not self.metrics.account(b.counts):
            log.error("accounting does not balance for a batch: in=%d accounted=%d (pipeline bug)",
                      b.counts.received, b.counts.accounted())
        await self._commit({tp: off + 1 for tp, off in b.last.items()})
        for tp, off in b.last.items():
            hw = self._consumer.highwater(tp)
            if hw is not None:
                self._set_lag(tp, hw - off - 1)
        now = self.last_commit_at = time.perf_counter()
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(now - b.started)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on: our outputs are delivered, the new owner redelivers.
            self.metrics.commit_failures.inc()
            log.warning("commit refused after a rebalance (records will be redelivered, duplicates downstream): %s",
                        type(exc).__name__)

    # --- producing ------------------------------------------------------------------------

    def _all_producers(self) -> list:
        """The producers (a test may have set `_producer` alone)."""
        return self._producers or [self._producer]

    async def _partitions_of(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            # Track the topic in the producer's metadata first. aiokafka's first metadata
            # answer lists every topic, and partitions_for() finds a topic there without
            # tracking it; once any topic is tracked, updates ask for the tracked ones only
            # and the others vanish from its metadata: a batch pending for one of them then
            # fails with NotLeaderForPartitionError after request_timeout_ms (measured:
            # dead letters and key writes whenever a tenant topic is created after start).
            for producer in self._all_producers():
                await producer.client.add_topic(topic)
            parts = self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
        return parts

    async def _produce(self, result: ProcessResult) -> list:
        """Hand every output to the producer in per-partition batches, without waiting for
        the broker; returns their delivery futures. The record batches are built and
        compressed in the encoding thread (both release the GIL), while this thread
        goes on with the next batch's pipeline."""
        if self._feeds is None:
            self._feeds = _PartitionFeeds(self._all_producers())
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetcloak-encode")
        try:
            futures = await self._produce_singles(result.outputs)
            blocks = []
            for block in result.blocks:
                if isinstance(block, EncodedBlock):  # encoded by the pipeline's process, compressed here
                    for p, batches in block.parts:
                        if self.settings.compression != "none":
                            batches = self._encoding(compress_batches, batches, self.settings.compression)
                        futures += self._feeds.send(block.topic, p, batches)
                else:
                    blocks.append(block)
            for topic, keys, values in join_by_topic(blocks):
                futures += await self._produce_block(topic, keys, values)
        except DeliveryFailed:
            raise
        except Exception as exc:
            raise DeliveryFailed(f"producing the batch's outputs failed: {exc!r}") from exc
        return futures

    def _encoding(self, fn, *args) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._encoder, fn, *args)

    async def _produce_block(self, topic: str, keys: list, values: list) -> list:
        """A topic's messages by partition (streams/partitioner.py), each partition's as
        record batches built in the encoding thread."""
        parts = self._partitions.get(topic) or await self._partitions_of(topic)
        timestamp_ms, futures = int(time.time() * 1000), []
        for p, rows in self._partitioner.groups(topic, keys, parts).items():
            encoded = self._encoding(_encode_part, topic, keys, values, timestamp_ms,
                                     self.settings.producer_batch_bytes, rows, self.settings.compression)
            futures += self._feeds.send(topic, p, encoded)
        return futures

    async def _produce_singles(self, outputs) -> list:
        """Messages one by one through aiokafka's batch builder (headers, tombstones)."""
        producer = self._producer
        builders: dict[tuple[str, int], list] = {}  # (topic, partition) -> its builders, the last one open
        per_topic: dict[str, tuple] = {}  # topic -> (partitions, {key: partition}) for this call
        for topic, key, value, headers in outputs:
            if type(headers) is not list:  # aiokafka's C batch builder takes lists only
                headers = list(headers) if headers else []
            t = per_topic.get(topic)
            if t is None:
                parts = self._partitions.get(topic) or await self._partitions_of(topic)
                t = per_topic[topic] = (parts, {})
            parts, known = t
            if key is None:
                p = self._partitioner.partition_for(topic, key, parts)
            else:
                p = known.get(key)
                if p is None:
                    p = known[key] = self._partitioner.partition_for(topic, key, parts)
            queue = builders.get((topic, p))
            if queue is None:
                queue = builders[(topic, p)] = [producer.create_batch()]
            if queue[-1].append(key=key, value=value, timestamp=None, headers=headers) is None:
                queue.append(producer.create_batch())
                if queue[-1].append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise DeliveryFailed(f"an output message for {topic} is larger than a producer batch")
        futures = []
        for (topic, p), queue in builders.items():
            futures += self._feeds.send(topic, p, queue)
        return futures

    # --- pipeline -------------------------------------------------------------------------

    async def _apply_control_changes(self) -> None:
        """The pending control change, now (no batch is being processed)."""
        await self._finish_control_change(*self._start_control_change())

    def _snapshot(self) -> ControlSnapshot:
        return self.control.snapshot() if self.control is not None else ControlSnapshot({}, {}, {}, 0)

    def _start_control_change(self) -> tuple:
        """The pending control change handed to the runner as one request (a refresh if
        the pipeline may absorb it, else a build; the child may queue it between two
        batches): (started, changed, snapshot)."""
        changed, self._changed = frozenset(self._changed), set()
        refresh = self.pipeline is not None and self.pipeline.refreshable and not self._rebuild and bool(changed)
        self._rebuild = False
        snapshot = self._snapshot()
        return self._runner.start_control(changed, snapshot, refresh), changed, snapshot

    async def _finish_control_change(self, started: Started, changed: frozenset[str], snapshot: ControlSnapshot) -> None:
        try:
            await started.ready()
        except PipelineError as exc:
            # Fail closed, as _build_pipeline: an erasure that cannot be applied must not
            # leave the worker processing under the old rules (nor a batch queued after it).
            self.metrics.pipeline_builds.labels("failed").inc()
            raise PipelineFailed(f"applying the control change {sorted(changed)} (control version "
                                 f"{snapshot.version}) raised {exc.blame}") from exc
        built = started.result()
        if built is None:
            self.metrics.pipeline_builds.labels("refreshed").inc()
            log.debug("pipeline refreshed for %s (control version %d)", sorted(changed), snapshot.version)
        else:
            await self._use_pipeline(built, snapshot)

    async def _build_pipeline(self) -> None:
        self._rebuild = False
        self._changed.clear()
        snapshot = self._snapshot()
        try:
            pipeline = await self._runner.build(snapshot)
        except PipelineError as exc:
            # Fail closed: a control change we cannot apply (an erasure, a policy) must not
            # leave the worker processing under the old rules.
            self.metrics.pipeline_builds.labels("failed").inc()
            raise PipelineFailed(f"building the pipeline from control version {snapshot.version} raised {exc.blame}") from exc
        await self._use_pipeline(pipeline, snapshot)

    async def _use_pipeline(self, pipeline: Built, snapshot: ControlSnapshot) -> None:
        """The runner's new pipeline built: its topics made sure of, its partitions known."""
        if self.settings.create_topics and pipeline.topics:
            await self._ensure_topics(list(pipeline.topics))
        self._partitions.clear()
        self._partitioner = Partitioner()
        if self.settings.pipeline_process and self.settings.create_topics:
            # The child encodes the outputs for these topics (they exist: just ensured).
            partitions = {spec.name: await self._partitions_of(spec.name) for spec in pipeline.topics}
            self._runner.encode_outputs(partitions, self.settings.producer_batch_bytes)
        self.pipeline = pipeline
        self.metrics.pipeline_builds.labels("ok").inc()
        log.info("pipeline built from control version %d: %s", snapshot.version, pipeline.description or "-")

    async def _ensure_topics(self, specs) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        from fleetcloak.streams.topics import ensure_topics

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap, client_id=self.settings.client_id)
        await admin.start()
        try:
            await ensure_topics(admin, specs)
        finally:
            await admin.close()

    # --- lag ------------------------------------------------------------------------------

    def _set_lag(self, tp: TopicPartition, value: int) -> None:
        labels = (tp.topic, str(tp.partition))
        self._lag_labels.add(labels)
        self.lag[tp] = max(value, 0)
        self.metrics.lag.labels(*labels).set(max(value, 0))

    def _forget_lag(self, tp: TopicPartition) -> None:
        labels = (tp.topic, str(tp.partition))
        self.lag.pop(tp, None)
        if labels in self._lag_labels:
            self._lag_labels.discard(labels)
            self.metrics.lag.remove(*labels)

"""Where the pure pipeline runs: in the delivery loop's thread, or in a child process.

The delivery loop (streams/loop.py) is I/O: fetch, produce, await acknowledgements,
commit. The pipeline (streams/seam.py) is CPU. In one thread they take turns: while a
batch is processed the event loop stands still, so no fetch answer is read and no
produce request goes out; the machine's second core idles. `ChildRunner` runs the same
factory and pipeline in a forked child process and talks to it over a pipe: while the
child processes batch n, the parent's event loop fetches batch n+1 and sends the
outputs of batch n-1. The seam is unchanged (pure, synchronous `process`); only where
it runs differs. `ChildRunner` is the worker's default (`fleetcloak worker`;
`--no-pipeline-process` and LoopSettings' default take `InLoopRunner`, the
single-process form; measured on the 2-core bench box
shared with the broker, outputs lz4-compressed: from even with the in-loop runner to
+13 % records/s, for ~0.8 s more CPU a bench run; bench/README.md).

Both have `build`, `refresh` (awaited), `prepare(messages)` and `start(prepared) ->
Started`: the loop prepares batch n while batch n-1 is being processed, awaits n-1's
`ready()` (its reply arrived and says it succeeded), starts n at once, and only then
decodes n-1's `result()` and produces it. The in-loop runner processes a pipeline
that has `steps` (streams/seam.py) in `ready()`, a step at a time, turning the event loop
between steps: the outputs of the batch before, produced just before, go out to the
broker round after round while this one is processed (aiokafka sends one request per
broker at a time and one batch per partition in it: a batch's outputs are several
rounds). A pipeline with `process` only is processed in `start`, the event loop
standing still.

The child runner `queues`: the loop starts batch n (writes its request) before it
awaits n-1, so the child goes from one batch to the next without waiting for the
parent; a pending control change is queued between them as one "control" request (a
refresh the pipeline may absorb, else a new pipeline), so it still applies from batch
n on. The child answers in request order; `build` and `refresh` calls are made only
when no batch is unanswered.

Protocol: each request and reply is its length, a tag byte (b"R" for a request; a
reply's status), then a pickle whose large buffers travel out of band after it, written
from where they were made and read into place (the packed input records; the record
batches of the outputs):

    ("build", snapshot)                       -> b"K" Built (topics, description, refreshable)
    ("refresh", changed, snapshot)            -> b"K" absorbed
    ("control", changed, snapshot, refresh)   -> b"K" None (refreshed) | Built (rebuilt)
    ("process", records, encoding)            -> b"K" ProcessResult
    a failure of any of them                  -> b"E" blame    type and innermost frame only

Failure is never silent: a pipeline exception comes back as PipelineError (the loop
stops without committing the batch), and a child that dies (killed, out of memory,
a crash in C) is ChildDied at the next reply. The child dies with its parent
(PR_SET_PDEATHSIG), so a SIGKILLed worker leaves no orphan holding memory, sockets or
the metrics port; it ignores SIGINT and SIGTERM (a signal to the process group is the
parent's to handle: it finishes the batch in hand, then closes the pipe).

Records cross packed (`pack_records`: the fast fetch's FetchedRecords in one buffer,
read in C as `PackedRecords`: columns, a record object only when one is asked for), or
as columns (one list per field pickles in one pass) when they are other objects. With
`encoding` (the partitions of the pipeline's topics), the child's replying thread cuts
each topic's outputs into uncompressed record batches (streams/partitioner.py:
EncodedBlock) while its main thread goes on to the next batch; the loop compresses and
sends them. Without it (topics not created by the loop), outputs come back as they are
and the loop encodes them.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import struct
import threading
import time
import traceback
from collections import deque
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generator, Sequence

from fleetcloak.streams.partitioner import Partitioner, encode_blocks
from fleetcloak.streams.recordbatch import PackedRecords, pack_records
from fleetcloak.streams.seam import ControlSnapshot, Pipeline, PipelineFactory, ProcessResult, RawMessage, as_pipeline

log = logging.getLogger(__name__)

_PICKLE = pickle.HIGHEST_PROTOCOL
_FRAME = struct.Struct(">Q")    # each message: its length, then its bytes
_SOCKET_BUFFER = 4 << 20


def blame(exc: BaseException) -> str:
    """Type and innermost frame of a pipeline exception, never its message: a message
    written by pipeline code may quote the record it choked on (an IMEI), and log lines
    must not carry raw identifiers."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return f"{type(exc).__name__}{where}"


class PipelineError(Exception):
    """The pipeline raised; `blame` says what and where (no message text)."""

    def __init__(self, blame: str) -> None:
        super().__init__(blame)
        self.blame = blame


class ChildDied(PipelineError):
    """The pipeline's child process is gone."""


@dataclass(frozen=True)
class Built:
    """What the loop needs to know of a built pipeline."""
    topics: tuple
    description: str
    refreshable: bool


class InLoopRunner:
    """The pipeline called in the loop's own thread."""

    queues = False  # a batch is processed when awaited: nothing to gain by starting it early

    def __init__(self, factory: PipelineFactory) -> None:
        self.factory = factory
        self.pipeline = None

    async def build(self, snapshot: ControlSnapshot) -> Built:
        try:
            self.pipeline = as_pipeline(self.factory(snapshot))
        except Exception as exc:
            raise PipelineError(blame(exc)) from exc
        return _built(self.pipeline)

    def start_control(self, changed: frozenset[str], snapshot: ControlSnapshot, refresh: bool) -> "Started":
        """A control change applied at once (the child's "control" request, here): result()
        None if `refresh` was asked and the pipeline absorbed it, else the new pipeline's Built."""
        try:
            self.pipeline, built = _control(self.pipeline, self.factory, changed, snapshot, refresh)
            return _Done(built)
        except Exception as exc:
            return _Done(error=PipelineError(blame(exc)))

    async def refresh(self, changed: frozenset[str], snapshot: ControlSnapshot) -> bool:
        try:
            return bool(self.pipeline.refresh(changed, snapshot))
        except Exception as exc:
            raise PipelineError(blame(exc)) from exc

    def encode_outputs(self, partitions: dict[str, list[int]], max_bytes: int) -> None:
        """Nothing to do: the loop encodes the outputs of a pipeline run in its thread."""

    def prepare(self, messages: Sequence[RawMessage]):
        return messages

    def start(self, prepared) -> "Started":
        if self.pipeline.steps is not None:
            return _Stepped(self.pipeline.steps(prepared))
        try:
            return _Done(self.pipeline.process(prepared))
        except Exception as exc:
            return _Done(error=PipelineError(blame(exc)))

    async def stop(self) -> None:
        pass


def _built(pipeline) -> Built:
    return Built(tuple(pipeline.topics), pipeline.description, pipeline.refresh is not None)


def _control(pipeline: Pipeline, factory: PipelineFactory, changed: frozenset[str], snapshot: ControlSnapshot,
             refresh: bool) -> tuple[Pipeline, Built | None]:
    """A control change applied: (the same pipeline, None) if `refresh` was asked and it
    absorbed the change, else (a new pipeline built from the snapshot, its Built)."""
    if refresh and pipeline.refresh is not None and pipeline.refresh(changed, snapshot):
        return pipeline, None
    pipeline = as_pipeline(factory(snapshot))
    return pipeline, _built(pipeline)


class Started(ABC):
    """A batch handed to a runner. `working`: still being processed elsewhere."""

    working = False

    @abstractmethod
    async def ready(self) -> None:
        """Return once it is processed without error (else raise PipelineError or
        ChildDied); the runner is then free for the next request."""

    @abstractmethod
    def result(self) -> ProcessResult:
        """Its ProcessResult, after ready()."""

    async def answered(self) -> None:
        """Return once ready() would no longer wait for the batch's processing (its reply
        is in, or the child is gone), without taking the answer: the loop waits for this
        or its next fetch, whichever comes first. At once unless `working`."""


class _Done(Started):
    def __init__(self, value: ProcessResult | None = None, error: PipelineError | None = None) -> None:
        self._value, self._error = value, error

    async def ready(self) -> None:
        if self._error is not None:
            raise self._error

    def result(self) -> ProcessResult:
        return self._value


STEP_TURNS = 4  # event-loop turns per pause: a produce answer read, its batches
#                acknowledged, the sender draining the next round, its request written


async def turn_event_loop(times: int) -> None:
    """Let the event loop run `times` iterations (I/O polled, ready callbacks run)."""
    for _ in range(times):
        await asyncio.sleep(0)


class _Stepped(Started):
    """A batch processed when awaited, a step of the pipeline at a time."""

    def __init__(self, steps: Generator[None, None, ProcessResult]) -> None:
        self._steps = steps
        self._value: ProcessResult | None = None

    async def ready(self) -> None:
        steps = self._steps
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    self._value = done.value
                    return
                except Exception as exc:
                    raise PipelineError(blame(exc)) from exc
                await turn_event_loop(STEP_TURNS)
        finally:
            steps.close()  # cancelled between steps: its finally clauses run now

    def result(self) -> ProcessResult:
        return self._value


class _Reply(Started):
    working = True

    def __init__(self, runner: "ChildRunner") -> None:
        self._runner = runner
        self._body: memoryview | None = None

    async def ready(self) -> None:
        self._body = await self._runner._reply_bytes()
        self.working = False

    async def answered(self) -> None:
        if self.working and self._runner._replies is not None:
            await self._runner._replies.arrived()

    def result(self) -> ProcessResult:
        return _load(self._body)


class _ReplyStream(asyncio.BufferedProtocol):
    """The child's replies (length, then bytes), read whenever the event loop runs, each
    straight into a buffer of its own: a large reply never waits, the child blocked on a
    full socket, until the loop asks for it, and its bytes are copied once, from the
    socket (a StreamReader copied each reply four times)."""

    def __init__(self) -> None:
        self._header = bytearray(_FRAME.size)
        self._buffer = self._header   # being filled: a header, or a reply's body
        self._got = 0
        self._done: deque[bytearray] = deque()
        self._waiters: list[asyncio.Future] = []  # next() and arrived(), from different tasks
        self._closed = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._got:]

    def buffer_updated(self, nbytes: int) -> None:
        self._got += nbytes
        if self._got < len(self._buffer):
            return
        self._got = 0
        if self._buffer is self._header:
            self._buffer = bytearray(_FRAME.unpack(self._header)[0])  # a reply is at least its status byte
            return
        self._done.append(self._buffer)
        self._buffer = self._header
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def arrived(self) -> None:
        """Return once a whole reply is waiting to be read, or the socket is closed."""
        while not self._done and not self._closed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    async def next(self) -> bytearray | None:
        """The next whole reply; None once the socket is closed without one."""
        await self.arrived()
        return self._done.popleft() if self._done else None


class ChildRunner:
    """The pipeline in a forked child process (see the module's docstring)."""

    queues = True  # a batch may be started while the one before is processed

    def __init__(self, factory: PipelineFactory) -> None:
        self.factory = factory
        self._proc = None
        self._replies: _ReplyStream | None = None
        self._transport: asyncio.Transport | None = None
        self._broken: str | None = None  # why the pipe can no longer be trusted
        self._unanswered = 0             # requests written whose reply is not read yet
        self._encoding: tuple[dict[str, list[int]], int] | None = None  # (partitions, max_bytes)

    # --- the parent side -------------------------------------------------------------
    async def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")  # the factory may be a closure: inherit it, never pickle it
        mine, theirs = socket.socketpair()
        for sock in (mine, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        proc = ctx.Process(target=_child_main, args=(theirs, mine, self.factory, os.getpid()),
                           name="fleetcloak-pipeline", daemon=True)
        proc.start()
        theirs.close()
        self._transport, self._replies = await asyncio.get_running_loop().create_connection(_ReplyStream, sock=mine)
        self._proc = proc
        log.info("pipeline process started (pid %d)", proc.pid)

    def _write(self, pieces: list) -> None:
        """Send one request (buffered by the transport: never blocks the event loop). The
        child answers requests in order, so one may be sent before the reply to the last
        one is read: it waits in the socket and the child starts it as soon as it is free."""
        if self._broken is not None or self._transport is None:
            raise ChildDied(self._broken or "not started")
        for piece in pieces:  # not writelines(): it joins them, a copy of the whole request
            self._transport.write(piece)
        self._unanswered += 1

    async def _call(self, request: tuple):
        if self._proc is None and self._broken is None:
            await self._start()  # by the first build(), before any batch
        if self._unanswered and self._broken is None:  # its reply would be read as this call's
            raise RuntimeError(f"{request[0]} requested while {self._unanswered} batch(es) are unanswered")
        self._write(_pieces(b"R", request))
        return _load(await self._reply_bytes())

    async def _reply_bytes(self) -> memoryview:
        """The body of the next "ok" reply after its status byte; PipelineError for an
        error reply, ChildDied if the child is gone."""
        if self._replies is None:
            raise ChildDied(self._broken or "closed")
        try:
            reply = await self._replies.next()
        except BaseException:  # cancelled: the reply, when it comes, would be read as the next one's
            self._broken = "a reply was abandoned"
            raise
        if reply is None:
            self._broken = f"the pipeline process died ({self._exit_status()})"
            raise ChildDied(self._broken)
        self._unanswered -= 1
        body = memoryview(reply)[1:]
        if reply[:1] != b"K":
            raise PipelineError(_load(body))
        return body

    def _exit_status(self) -> str:
        proc = self._proc
        if proc is None:
            return "not started"
        proc.join(timeout=1)
        code = proc.exitcode
        if code is None:
            return "still running, pipe closed"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    async def build(self, snapshot: ControlSnapshot) -> Built:
        return await self._call(("build", snapshot))

    async def refresh(self, changed: frozenset[str], snapshot: ControlSnapshot) -> bool:
        return await self._call(("refresh", changed, snapshot))

    def start_control(self, changed: frozenset[str], snapshot: ControlSnapshot, refresh: bool) -> Started:
        """Queue a control change behind the batch being processed, so the batch queued
        after it is processed under the new rules without the child waiting between them.
        Its result(): None if `refresh` was asked and the pipeline absorbed the change,
        else the new pipeline's Built."""
        try:
            self._write(_pieces(b"R", ("control", changed, snapshot, refresh)))
        except ChildDied as exc:
            return _Done(error=exc)
        return _Reply(self)

    def encode_outputs(self, partitions: dict[str, list[int]], max_bytes: int) -> None:
        """From the next batch on, the child replies with the blocks of these topics
        already cut into uncompressed record batches (streams/partitioner.py; the loop
        compresses them, on the other core), `partitions` being the producer's
        partitions of each topic."""
        self._encoding = (dict(partitions), max_bytes)

    def prepare(self, messages: Sequence[RawMessage]) -> list:
        return _pieces(b"R", ("process", _wire_records(messages), self._encoding))

    def start(self, prepared: list) -> Started:
        try:
            self._write(prepared)
        except ChildDied as exc:
            return _Done(error=exc)
        return _Reply(self)

    async def stop(self) -> None:
        """Stop the child: EOF on its socket ends its loop; killed if it does not exit."""
        proc, transport = self._proc, self._transport
        self._proc = self._replies = self._transport = None
        self._broken = "closed"
        if transport is not None:
            transport.close()
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
            if proc.exitcode is None:
                log.warning("pipeline process %d did not exit: killed", proc.pid)
                proc.kill()
                proc.join(5)


# --- crossing the pipe ------------------------------------------------------------------
_COUNT = struct.Struct(">I")


def _pieces(tag: bytes, payload) -> list:
    """A request or reply as the pieces to write: its length, then a tag byte (a reply's
    status), the count of out-of-band buffers and their lengths, the pickle, and the
    buffers themselves: packed input records, the record batches of EncodedBlocks,
    written from where they were made, never copied into the pickle."""
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(payload, protocol=_PICKLE, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    head = tag + _COUNT.pack(len(raws)) + b"".join(_FRAME.pack(r.nbytes) for r in raws)
    size = len(head) + len(meta) + sum(r.nbytes for r in raws)
    return [_FRAME.pack(size) + head, meta, *raws]


def _load(body: memoryview):
    """What `_pieces` sent, from the bytes after the tag; the out-of-band buffers come
    back as views of `body` (no copy)."""
    (count,) = _COUNT.unpack_from(body, 0)
    pos = _COUNT.size + count * _FRAME.size
    lengths = [_FRAME.unpack_from(body, _COUNT.size + i * _FRAME.size)[0] for i in range(count)]
    end = len(body) - sum(lengths)
    meta = body[pos:end]
    buffers = []
    for n in lengths:
        buffers.append(body[end:end + n])
        end += n
    return pickle.loads(meta, buffers=buffers)


def _wire_records(messages: Sequence[RawMessage]) -> tuple:
    """The batch's records as they cross to the child: packed in one buffer when they are
    the fast fetch's FetchedRecords (streams/recordbatch.py), else as columns (one list
    per field pickles in one pass)."""
    packed = pack_records(messages)
    return ("packed", pickle.PickleBuffer(packed)) if packed is not None else ("columns", _columns(messages))


def _records(wire: tuple) -> Sequence[RawMessage]:
    """The records `_wire_records` sent: PackedRecords (columns; FetchedRecords when asked
    for), or light RawMessage objects."""
    kind, body = wire
    return PackedRecords(body) if kind == "packed" else list(map(_Raw, *body))


def _columns(messages: Sequence[RawMessage]) -> tuple:
    return ([m.key for m in messages], [m.value for m in messages], [m.headers for m in messages],
            [m.topic for m in messages], [m.partition for m in messages], [m.offset for m in messages],
            [m.timestamp for m in messages])


class _Raw:
    """A RawMessage rebuilt in the child."""
    __slots__ = ("key", "value", "headers", "topic", "partition", "offset", "timestamp")

    def __init__(self, key, value, headers, topic, partition, offset, timestamp) -> None:
        self.key = key
        self.value = value
        self.headers = headers
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp


# --- the child --------------------------------------------------------------------------
def _detach(parent_pid: int) -> None:
    """Die with the parent; leave signals to it."""
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop's: a signal here must not wake it
    except ValueError:
        pass
    # SIGINT and SIGTERM reach the whole process group (a terminal's Ctrl-C, systemd's
    # control-group stop): the parent finishes the batch in hand, which needs this process
    # alive, then closes the pipe (EOF ends this process) or kills it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("the pipeline process cannot ask to die with its parent (no prctl)")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _recv_exact(sock: socket.socket, n: int, buf: bytearray | None = None) -> memoryview | bytearray | None:
    """n bytes from sock, read into `buf` (at least n long) or a new bytearray; None at EOF."""
    if buf is None:
        buf = bytearray(n)
    view, got = memoryview(buf)[:n], 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return view


class _Inbox:
    """The child's requests, each read into a buffer kept from one request to the next: a
    new bytearray the size of a request (~3.3 MB for 8,000 raw messages) was zeroed and
    faulted in for each, 3-10 ms on the worker's critical path. The buffer is reused only
    once nothing views it any more (a bytearray refuses to change size while a view of it
    is alive), so no request is overwritten under code still reading it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def next(self) -> memoryview | None:
        """The next request's bytes (tag and body); None once the parent closed the socket."""
        header = _recv_exact(self._sock, _FRAME.size)
        if header is None:
            return None
        n = _FRAME.unpack(header)[0]
        buf = self._buf
        try:
            buf.append(0)  # BufferError while a view of the last request is alive
            del buf[-1]
        except BufferError:
            buf = self._buf = bytearray()
        if len(buf) < n:
            buf = self._buf = bytearray(n)
        return _recv_exact(self._sock, n, buf)


def _send_replies(sock: socket.socket, outbox: "queue.SimpleQueue") -> None:
    """The child's replying thread, in request order: a batch's outputs cut into record
    batches (the C part runs without the GIL) and the reply written (a socket write
    releases it too), while the main thread processes the next request."""
    partitioner = Partitioner()
    while (item := outbox.get()) is not None:
        status, payload, encoding = item
        if encoding == "reset":
            partitioner = Partitioner()  # a new pipeline: forget the old round robin and cache
        elif encoding is not None:
            partitions, max_bytes = encoding
            try:
                payload.blocks = encode_blocks(payload.blocks, partitioner, partitions, int(time.time() * 1000),
                                               max_bytes)
            except Exception as exc:
                status, payload = b"E", blame(exc)
        try:
            for piece in _pieces(status, payload):
                sock.sendall(piece)
        except OSError:  # the parent is gone or closed the socket: nobody to answer
            return
        del item, payload


# The child collects cycles itself: its automatic collector is off. The batches' objects
# are acyclic and refcounting frees them, yet the automatic collector walked them every
# 700 allocations (the unpacked records' header lists, the replies' pieces): 0.30 s of a
# bench run's 3.9 s of child CPU, its main thread being the worker's bottleneck. After
# a (re)build: unfreeze (the pipeline before may have died in a cycle), collect, freeze
# what the new pipeline keeps. Every COLLECT_EVERY requests: a full collection frees
# whatever cycles the batches left (~15 ms each, measured). A batch should leave none: one
# that did (a kept exception's traceback reaching the batch's frame) held every batch in
# memory until the collection, and each next batch faulted its pages in afresh: ~5,000
# page faults a batch, at ~3.7 us each on the bench box (tests/streams/test_pipeline.py).
COLLECT_EVERY = 64


def _child_main(sock: socket.socket, parent_end: socket.socket, factory: PipelineFactory, parent_pid: int) -> None:
    _detach(parent_pid)
    parent_end.close()
    gc.disable()
    requests = 0
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_send_replies, args=(sock, outbox), name="replies", daemon=True).start()
    pipeline = None
    inbox = _Inbox(sock)
    while True:
        raw = inbox.next()
        if raw is None:
            return  # EOF: the parent closed the socket or is gone
        request = _load(raw[1:])
        op, body, encoding = request[0], None, None
        try:
            if op == "process":
                body = pipeline.process(_records(request[1]))
                encoding = request[2]
            elif op == "build":
                pipeline = as_pipeline(factory(request[1]))
                body, encoding = _built(pipeline), "reset"
            elif op == "refresh":
                body = bool(pipeline.refresh(request[1], request[2]))
            elif op == "control":  # a refresh if asked and absorbed (None), else a new pipeline
                pipeline, body = _control(pipeline, factory, *request[1:])
                encoding = None if body is None else "reset"
            else:
                raise ValueError(f"unknown request {op!r}")
            status = b"K"
        except Exception as exc:
            status, body, encoding = b"E", blame(exc), None
        del request, raw
        outbox.put((status, body, encoding))
        del body
        requests += 1
        if encoding == "reset":  # a new pipeline: keep its long-lived state out of the collections
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        elif requests % COLLECT_EVERY == 0:
            gc.collect()

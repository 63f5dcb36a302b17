"""Where the pure pipeline runs: in the delivery loop's thread, or in a child process.

The delivery loop (streams/loop.py) is I/O: fetch, produce, await acknowledgements,
commit. The pipeline (streams/seam.py) is CPU. In one thread they take turns: while a
batch is processed the event loop stands still, so no fetch answer is read and no
produce request goes out; the machine's second core idles. `ChildRunner` runs the same
factory and pipeline in a forked child process and talks to it over a pipe: while the
child processes batch n, the parent's event loop fetches batch n+1 and sends the
outputs of batch n-1. The seam is unchanged (pure, synchronous `process`); only where
it runs differs. `InLoopRunner` is the single-process form, the worker's default;
`fleetcloak worker --pipeline-process` takes the child (measured on the 2-core bench box
shared with the broker: +0-15 % messages/s for ~35 % more CPU, bench/README.md).

Both have `build`, `refresh` (awaited), `prepare(messages)` and `start(prepared) ->
Started`: the loop prepares batch n while batch n-1 is being processed, awaits n-1's
`ready()` (its reply arrived and says it succeeded), starts n at once, and only then
decodes n-1's `result()` and produces it, so the child waits for neither the encoding
of its next batch nor the decoding of its last. The in-loop runner processes a pipeline
that has `steps` (streams/seam.py) in `ready()`, a step at a time, turning the event loop
between steps: the outputs of the batch before, produced just before, go out to the
broker round after round while this one is processed (aiokafka sends one request per
broker at a time and one batch per partition in it: a batch's outputs are several
rounds). A pipeline with `process` only is processed in `start`, the event loop
standing still.

Protocol (one request at a time: a batch is started only when the previous reply was
read and said "ok"): requests are pickled tuples, replies one status byte and a pickle:

    ("build", snapshot)             -> b"K" (topics, description, refreshable)
    ("refresh", changed, snapshot)  -> b"K" absorbed
    ("process", columns)            -> b"K" ProcessResult
    a failure of any of them        -> b"E" blame    type and innermost frame only

Failure is never silent: a pipeline exception comes back as PipelineError (the loop
stops without committing the batch), and a child that dies (killed, out of memory,
a crash in C) is ChildDied at the next reply. The child dies with its parent
(PR_SET_PDEATHSIG), so a SIGKILLed worker leaves no orphan holding memory, sockets or
the metrics port; it ignores SIGINT and SIGTERM (a signal to the process group is the
parent's to handle: it finishes the batch in hand, then closes the pipe).

Messages cross as columns (keys, values, headers, topics, partitions, offsets,
timestamps), not as aiokafka's ConsumerRecord objects: one list per field pickles in
one pass; the child rebuilds light RawMessage objects.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generator, Sequence

from fleetcloak.streams.seam import ControlSnapshot, PipelineFactory, ProcessResult, RawMessage, as_pipeline

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

    def __init__(self, factory: PipelineFactory) -> None:
        self.factory = factory
        self.pipeline = None

    async def build(self, snapshot: ControlSnapshot) -> Built:
        try:
            pipeline = as_pipeline(self.factory(snapshot))
        except Exception as exc:
            raise PipelineError(blame(exc)) from exc
        self.pipeline = pipeline
        return Built(tuple(pipeline.topics), pipeline.description, pipeline.refresh is not None)

    async def refresh(self, changed: frozenset[str], snapshot: ControlSnapshot) -> bool:
        try:
            return bool(self.pipeline.refresh(changed, snapshot))
        except Exception as exc:
            raise PipelineError(blame(exc)) from exc

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

    def result(self) -> ProcessResult:
        return pickle.loads(self._body)


class ChildRunner:
    """The pipeline in a forked child process (see the module's docstring)."""

    def __init__(self, factory: PipelineFactory) -> None:
        self.factory = factory
        self._proc = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._broken: str | None = None  # why the pipe can no longer be trusted

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
        # The reader drains the child's replies whenever the event loop runs (a large reply
        # must not wait, with the child blocked on a full socket, until the loop asks for
        # it); no flow-control limit short of a whole reply.
        self._reader, self._writer = await asyncio.open_connection(sock=mine, limit=1 << 30)
        self._proc = proc
        log.info("pipeline process started (pid %d)", proc.pid)

    def _write(self, request: bytes) -> None:
        """Send one request (buffered by the transport: never blocks the event loop)."""
        if self._broken is not None or self._writer is None:
            raise ChildDied(self._broken or "not started")
        self._broken = "a request is unanswered"  # until its reply is read (cancelled mid-call: out of step)
        self._writer.write(_FRAME.pack(len(request)))
        self._writer.write(request)

    async def _call(self, request: tuple):
        if self._proc is None and self._broken is None:
            await self._start()  # by the first build(), before any batch
        self._write(pickle.dumps(request, protocol=_PICKLE))
        return pickle.loads(await self._reply_bytes())

    async def _reply_bytes(self) -> memoryview:
        """The pickled body of an "ok" reply; PipelineError for an error reply."""
        if self._reader is None:
            raise ChildDied(self._broken or "closed")
        try:
            (size,) = _FRAME.unpack(await self._reader.readexactly(_FRAME.size))
            reply = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, OSError) as exc:
            self._broken = f"the pipeline process died ({self._exit_status()})"
            raise ChildDied(self._broken) from exc
        self._broken = None
        body = memoryview(reply)[1:]
        if reply[:1] != b"K":
            raise PipelineError(pickle.loads(body))
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
        return Built(*await self._call(("build", snapshot)))

    async def refresh(self, changed: frozenset[str], snapshot: ControlSnapshot) -> bool:
        return await self._call(("refresh", changed, snapshot))

    def prepare(self, messages: Sequence[RawMessage]) -> bytes:
        return pickle.dumps(("process", _columns(messages)), protocol=_PICKLE)

    def start(self, prepared: bytes) -> Started:
        try:
            self._write(prepared)
        except ChildDied as exc:
            return _Done(error=exc)
        return _Reply(self)

    async def stop(self) -> None:
        """Stop the child: EOF on its socket ends its loop; killed if it does not exit."""
        proc, writer = self._proc, self._writer
        self._proc = self._reader = self._writer = None
        self._broken = "closed"
        if writer is not None:
            writer.close()
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
            if proc.exitcode is None:
                log.warning("pipeline process %d did not exit: killed", proc.pid)
                proc.kill()
                proc.join(5)


# --- crossing the pipe ------------------------------------------------------------------
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


def _messages(columns: tuple) -> list[_Raw]:
    return list(map(_Raw, *columns))


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


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return buf


def _child_main(sock: socket.socket, parent_end: socket.socket, factory: PipelineFactory, parent_pid: int) -> None:
    _detach(parent_pid)
    parent_end.close()
    pipeline = None
    while True:
        header = _recv_exact(sock, _FRAME.size)
        if header is None:
            return  # EOF: the parent closed the socket or is gone
        raw = _recv_exact(sock, _FRAME.unpack(header)[0])
        if raw is None:
            return
        request = pickle.loads(raw)
        del raw
        op, body = request[0], None
        try:
            if op == "process":
                body = pipeline.process(_messages(request[1]))
            elif op == "build":
                pipeline = as_pipeline(factory(request[1]))
                body = (tuple(pipeline.topics), pipeline.description, pipeline.refresh is not None)
            elif op == "refresh":
                body = bool(pipeline.refresh(request[1], request[2]))
            else:
                raise ValueError(f"unknown request {op!r}")
            status, reply = b"K", pickle.dumps(body, protocol=_PICKLE)
        except Exception as exc:
            status, reply = b"E", pickle.dumps(blame(exc), protocol=_PICKLE)
        del request, body
        try:
            sock.sendall(_FRAME.pack(1 + len(reply)) + status)
            sock.sendall(reply)
        except OSError:  # the parent is gone or closed the socket: nobody to answer
            return

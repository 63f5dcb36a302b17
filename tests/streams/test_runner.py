"""The pipeline in a child process (streams/runner.py): same results as in the loop,
failures never silent, no orphan, and no record lost when the child dies mid-stream."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from fleetcloak.streams.loop import BatchLoop, LoopSettings, PipelineFailed
from fleetcloak.streams.runner import ChildDied, ChildRunner, InLoopRunner, PipelineError
from fleetcloak.streams.seam import ControlSnapshot, Counts, Message, OutputBlock, Pipeline, ProcessResult
from fleetcloak.streams.topicio import unique_name

SNAP = ControlSnapshot({b"t": b"v1"}, {}, {}, 1)


def _factory(calls: list):
    """A closure (never picklable): the child must inherit it by fork."""
    def build(snap: ControlSnapshot) -> Pipeline:
        calls.append(snap.version)
        version = snap.version

        def process(batch):
            if any(m.value == b"boom" for m in batch):
                raise ZeroDivisionError(f"choked on {batch[0].key!r}")  # the message quotes a key
            counts = Counts(received=len(batch))
            counts.forwarded[("p", "")] = len(batch)
            return ProcessResult([("single", m.key, m.value, list(m.headers)) for m in batch[:1]], counts,
                                 [OutputBlock("block", [m.key for m in batch],
                                              [b"%s|%d|%d|%d" % (m.value, m.offset, version, os.getpid()) for m in batch])])

        def refresh(changed, snap2):
            return "keys" in changed
        return Pipeline(process, topics=("a-topic-spec",), description=f"v{version}", refresh=refresh)
    return build


@contextlib.asynccontextmanager
async def _built_child(factory=None):
    """A ChildRunner with its pipeline built from SNAP, stopped afterwards."""
    child = ChildRunner(factory or _factory([]))
    try:
        await child.build(SNAP)
        yield child
    finally:
        await child.stop()


async def _process(runner, messages) -> ProcessResult:
    started = runner.start(runner.prepare(messages))
    await started.ready()
    return started.result()


def _msgs(n: int, poison: int | None = None) -> list[Message]:
    return [Message(b"boom" if i == poison else b"m%d" % i, b"35%013d" % i, [("h", b"%d" % i)], offset=i)
            for i in range(n)]


def test_child_runs_the_pipeline_in_another_process_with_the_in_loop_results():
    async def go():
        calls: list = []
        child, here = ChildRunner(_factory(calls)), InLoopRunner(_factory([]))
        try:
            built = await child.build(SNAP)
            assert (built.topics, built.description, built.refreshable) == (("a-topic-spec",), "v1", True)
            assert calls == []  # built in the child, not here
            await here.build(SNAP)
            got = await _process(child, _msgs(50))
            want = await _process(here, _msgs(50))
            assert got.outputs == want.outputs and got.counts == want.counts
            (block,), (mine,) = got.blocks, want.blocks
            assert block.keys == mine.keys
            pids = {v.rsplit(b"|", 1)[1] for v in block.values}
            assert pids != {b"%d" % os.getpid()} and len(pids) == 1  # processed elsewhere, in one process
            assert await child.refresh(frozenset({"keys"}), SNAP) is True
            assert await child.refresh(frozenset({"policies"}), SNAP) is False
            await child.build(ControlSnapshot({}, {}, {}, 7))  # a rebuild reaches the child
            again = await _process(child, _msgs(3))
            assert all(v.split(b"|")[2] == b"7" for v in again.blocks[0].values)
        finally:
            await child.stop()
    asyncio.run(go())


def test_queued_batches_and_a_control_change_between_them_are_answered_in_order():
    """The loop writes batch n+1 (and a pending control change before it) while batch n is
    processed: the child answers in order, n under the old rules, n+1 under the new."""
    async def go():
        async with _built_child() as child:
            first = child.start(child.prepare(_msgs(4)))
            absorbed = child.start_control(frozenset({"keys"}), ControlSnapshot({}, {}, {}, 2), True)
            second = child.start(child.prepare(_msgs(3)))
            rebuilt = child.start_control(frozenset({"policies"}), ControlSnapshot({}, {}, {}, 3), True)
            third = child.start(child.prepare(_msgs(2)))
            with pytest.raises(RuntimeError, match="unanswered"):
                await child.refresh(frozenset({"keys"}), SNAP)  # its reply would be a batch's
            versions = []
            for started in (first, absorbed, second, rebuilt, third):
                await started.ready()
                versions.append(started.result())
            first, absorbed, second, built, third = versions
            assert [v.split(b"|")[2] for v in first.blocks[0].values] == [b"1"] * 4
            assert absorbed is None  # refreshed: the same pipeline goes on
            assert [v.split(b"|")[2] for v in second.blocks[0].values] == [b"1"] * 3
            assert (built.description, built.refreshable) == ("v3", True)
            assert [v.split(b"|")[2] for v in third.blocks[0].values] == [b"3"] * 2
    asyncio.run(go())


def test_answered_wakes_every_waiter_and_leaves_the_reply_to_ready():
    """The loop waits for a batch's reply or its next fetch, whichever comes first, while a
    rebalance may be settling (ready()) from another task: both wake, the reply is taken
    once, by ready(), and a child that died wakes answered() too."""
    async def go():
        async with _built_child() as child:
            started = child.start(child.prepare(_msgs(5)))
            assert started.working
            waiters = [asyncio.ensure_future(started.answered()) for _ in range(2)]
            settling = asyncio.ensure_future(started.ready())
            await asyncio.wait_for(asyncio.gather(*waiters, settling), 10)
            assert len(started.result().blocks[0].values) == 5 and not started.working
            await asyncio.wait_for(started.answered(), 1)  # answered: returns at once
            again = child.start(child.prepare(_msgs(2)))
            await asyncio.wait_for(again.answered(), 10)   # the reply is in, not taken
            await again.ready()
            assert len(again.result().blocks[0].values) == 2
            child._proc.kill()
            child._proc.join(10)
            gone = child.start(child.prepare(_msgs(1)))
            await asyncio.wait_for(gone.answered(), 10)    # never answered: the child is gone
            with pytest.raises(ChildDied):
                await gone.ready()
    asyncio.run(go())


def test_the_childs_inbox_reuses_its_buffer_only_when_no_view_of_it_is_alive():
    import socket

    from fleetcloak.streams.runner import _FRAME, _Inbox

    ours, theirs = socket.socketpair()
    try:
        inbox = _Inbox(theirs)
        for body in (b"R" + b"a" * 5000, b"R" + b"b" * 300, b"R" + b"c" * 7000, b"R" + b"d" * 10):
            ours.sendall(_FRAME.pack(len(body)) + body)
        first = inbox.next()
        assert bytes(first) == b"R" + b"a" * 5000
        kept = first[1:]  # a view still alive: the next request may not overwrite it
        del first
        second = inbox.next()
        assert bytes(second) == b"R" + b"b" * 300 and bytes(kept) == b"a" * 5000
        del kept
        buffer = second.obj
        del second
        third = inbox.next()  # nothing views the buffer: read into it again (grown)
        assert bytes(third) == b"R" + b"c" * 7000 and third.obj is not buffer
        grown = third.obj
        del third
        fourth = inbox.next()
        assert bytes(fourth) == b"R" + b"d" * 10 and fourth.obj is grown  # reused as it is
        del fourth
        ours.close()
        assert inbox.next() is None  # EOF
    finally:
        ours.close()
        theirs.close()


def test_records_cross_packed_when_they_are_fetched_records_and_as_columns_otherwise():
    from fleetcloak.streams.recordbatch import build_batches, read_batches
    from fleetcloak.streams.runner import _records, _wire_records

    batch = build_batches([b"k1", None], [b"v1", b""], 1_700_000_000_000, 1 << 20)[0]
    fetched, *_ = read_batches(bytes(batch._build()), 0, "telematics.raw", 3, 0)
    kind, body = _wire_records(fetched)
    packed = _records((kind, memoryview(body.raw())))
    assert kind == "packed" and type(packed).__name__ == "PackedRecords"
    assert (packed.keys, packed.values) == ([b"k1", None], [b"v1", b""])  # columns, no record objects
    assert [packed[1], packed[0]] == [fetched[1], fetched[0]] and list(packed) == fetched
    kind, body = _wire_records(_msgs(3))
    assert kind == "columns"
    assert [(m.key, m.value, m.headers, m.offset) for m in _records((kind, body))] == \
        [(m.key, m.value, m.headers, m.offset) for m in _msgs(3)]


def test_a_pipeline_exception_in_the_child_comes_back_as_its_type_and_place_only():
    async def go():
        async with _built_child() as child:
            with pytest.raises(PipelineError) as failed:
                await _process(child, _msgs(20, poison=5))
            assert failed.value.blame.startswith("ZeroDivisionError at test_runner.py:")
            assert "35" not in failed.value.blame  # not the message, which quotes a key
            assert len((await _process(child, _msgs(5))).blocks[0]) == 5  # the child lives on
    asyncio.run(go())



def test_the_child_collects_the_cycles_its_batches_leave_with_its_automatic_collector_off():
    """The child turns the automatic collector off (streams/runner.py, COLLECT_EVERY):
    cycles a pipeline leaves behind are still freed, every COLLECT_EVERY requests."""
    from fleetcloak.streams.runner import COLLECT_EVERY

    def build(snap: ControlSnapshot) -> Pipeline:
        import gc
        import weakref

        class Node:
            pass
        alive: list = []  # weak references to every cycle made so far

        def process(batch):
            node = Node()
            node.self = node  # a cycle refcounting cannot free
            alive.append(weakref.ref(node))
            counts = Counts(received=len(batch))
            counts.forwarded[("p", "")] = len(batch)
            live = sum(r() is not None for r in alive)
            return ProcessResult([], counts, [OutputBlock("block", [b"k"], [b"%d|%d" % (gc.isenabled(), live)])])
        return Pipeline(process, topics=(), description="cycles")

    async def go():
        async with _built_child(build) as child:
            replies = [(await _process(child, _msgs(1))).blocks[0].values[0] for _ in range(COLLECT_EVERY + 2)]
        enabled, live = zip(*(map(int, r.split(b"|")) for r in replies))
        assert set(enabled) == {0}
        # requests: the build, then batches; the collection follows the COLLECT_EVERY-th
        assert list(live[:COLLECT_EVERY - 1]) == list(range(1, COLLECT_EVERY))  # the collector is off
        assert list(live[COLLECT_EVERY - 1:]) == [1, 2, 3]  # the full collection freed them all
    asyncio.run(go())

def test_a_killed_child_is_reported_with_its_signal_and_stays_dead():
    async def go():
        async with _built_child() as child:
            os.kill(child._proc.pid, signal.SIGKILL)
            with pytest.raises(ChildDied, match="killed by signal 9"):
                await _process(child, _msgs(5))
            with pytest.raises(ChildDied):
                await _process(child, _msgs(5))
            with pytest.raises(ChildDied):
                await child.build(SNAP)
    asyncio.run(go())


def test_close_reaps_the_child():
    async def go():
        child = ChildRunner(_factory([]))
        await child.build(SNAP)
        proc = child._proc
        await child.stop()
        assert proc.exitcode == 0
    asyncio.run(go())


def test_the_child_dies_with_its_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from fleetcloak.streams.runner import ChildRunner\n"
        "from fleetcloak.streams.seam import ControlSnapshot, passthrough_factory\n"
        "async def go():\n"
        "    r = ChildRunner(passthrough_factory('x'))\n"
        "    await r.build(ControlSnapshot({}, {}, {}))\n"
        "    print(r._proc.pid, flush=True)\n"
        "    time.sleep(60)\n"
        "asyncio.run(go())\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert os.path.exists(f"/proc/{child_pid}")
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid), "the pipeline process outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie waits for init to reap it
    except FileNotFoundError:
        return False


# --- in the delivery loop, on the real broker -------------------------------------------
def _inputs(n: int) -> list[tuple[bytes, bytes, list]]:
    return [(b"35%013d" % (i % 40), b"msg-%07d" % i, [("h", b"1")]) for i in range(n)]


def _poisoned_factory(dst: str, poison: bytes):
    def build(snap):
        def process(batch):
            if any(m.value == poison for m in batch):
                raise RuntimeError("a bug")
            counts = Counts(received=len(batch))
            counts.forwarded[("p", "")] = len(batch)
            return ProcessResult([], counts, [OutputBlock(dst, [m.key for m in batch], [m.value for m in batch])])
        return Pipeline(process)
    return build


@pytest.mark.broker
def test_loop_with_the_child_commits_only_what_it_delivered_before_a_failure(broker, new_topic, topic_io):
    n = 3000
    src, dst, group = new_topic("raw", 2), unique_name("out"), unique_name("grp")
    topic_io.produce(src, _inputs(n))
    settings = LoopSettings(broker, input_topic=src, group_id=group, max_records=200, pipeline_process=True)

    async def run(loop, remaining):
        task = asyncio.create_task(loop.run())
        deadline = time.monotonic() + 60
        while not task.done():
            if loop.consumed >= remaining or time.monotonic() > deadline:
                loop.request_stop()
            await asyncio.sleep(0.02)
        await task

    first = BatchLoop(settings, _poisoned_factory(dst, b"msg-0002200"))
    with pytest.raises(PipelineFailed, match="RuntimeError at test_runner.py"):
        asyncio.run(run(first, n))
    committed = topic_io.committed(group, src)
    delivered = topic_io.read_all(dst)
    assert 0 < sum(committed.values()) < n
    assert len(delivered) == sum(committed.values())  # committed exactly what was delivered
    assert b"msg-0002200" not in {r.value for r in delivered}

    second = BatchLoop(settings, _poisoned_factory(dst, b"none"))
    asyncio.run(run(second, n - sum(committed.values())))
    assert topic_io.committed(group, src) == topic_io.true_end_offsets(src)
    values = [r.value for r in topic_io.read_all(dst)]
    assert set(values) == {v for _, v, _ in _inputs(n)}
    assert len(values) == n  # the failed batch produced nothing: no duplicates either


@pytest.mark.broker
def test_sigkill_of_the_pipeline_process_stops_the_worker_and_a_restart_delivers_all(
        broker, new_topic, topic_io, worker_process, wait_until):
    n = 20_000
    src, dst, group = new_topic("raw", 4), unique_name("out"), unique_name("grp")
    topic_io.produce(src, _inputs(n))
    args = ("--input-topic", src, "--group", group, "--pipeline", "passthrough", "--passthrough-topic", dst,
            "--max-records", "100", "--session-timeout-ms", "6000", "--pipeline-process")
    w1 = worker_process(*args)
    w1.wait_health(lambda h: h["consumed"] >= 2000, timeout=40)
    (child,) = _children(w1.proc.pid)
    os.kill(child, signal.SIGKILL)
    assert w1.wait(30) == 1
    assert "pipeline process died (killed by signal 9)" in w1.log()
    assert "WITHOUT committing" in w1.log()
    committed = sum(topic_io.committed(group, src).values())
    assert 0 < committed < n

    w2 = worker_process(*args)
    end = topic_io.true_end_offsets(src)
    wait_until(lambda: topic_io.committed(group, src) == end, timeout=60, what="the restarted worker to catch up")
    w2.signal(signal.SIGTERM)
    assert w2.wait() == 0, w2.log()[-2000:]
    assert {r.value for r in topic_io.read_all(dst)} == {v for _, v, _ in _inputs(n)}


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


@pytest.mark.broker
def test_sigterm_to_worker_and_pipeline_process_alike_still_stops_cleanly(broker, new_topic, topic_io, worker_process):
    """A signal to the process group (Ctrl-C, systemd stopping the unit) reaches the child
    too: it ignores it, and the worker finishes, delivers and commits the batch in hand."""
    n = 20_000
    src, dst, group = new_topic("raw", 4), unique_name("out"), unique_name("grp")
    topic_io.produce(src, _inputs(n))
    w = worker_process("--input-topic", src, "--group", group, "--pipeline", "passthrough", "--passthrough-topic", dst,
                       "--max-records", "100", "--pipeline-process")
    w.wait_health(lambda h: h["consumed"] >= 2000, timeout=40)
    (child,) = _children(w.proc.pid)
    os.kill(child, signal.SIGTERM)
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.log()[-2000:]
    committed = sum(topic_io.committed(group, src).values())
    delivered = topic_io.read_all(dst)
    assert 0 < committed <= n
    assert len(delivered) == committed == len({r.value for r in delivered})
    assert not _alive(child)


def _stepped_pipeline(log: list, fail_at: int | None = None) -> Pipeline:
    """A pipeline with `steps`: three steps a batch, each noting the event loop's tick."""
    def process(batch):
        return ProcessResult([], Counts(received=len(batch), dropped={("x", ""): len(batch)}))

    def steps(batch):
        try:
            for i in range(3):
                if i == fail_at:
                    raise ZeroDivisionError(f"choked on {batch[0].key!r}")
                log.append(("step", i))
                yield
            return process(batch)
        finally:
            log.append(("closed",))
    return Pipeline(process, steps=steps)


def _ticking(log: list) -> asyncio.Task:
    async def tick():
        while True:
            log.append(("tick",))
            await asyncio.sleep(0)
    return asyncio.create_task(tick())


def test_in_loop_runner_turns_the_event_loop_between_steps():
    """The producer's requests and acknowledgements move on while a batch is processed:
    other tasks run between the pipeline's steps, and the batch is processed when awaited."""
    async def go():
        log: list = []
        runner = InLoopRunner(lambda snap: _stepped_pipeline(log))
        await runner.build(SNAP)
        started = runner.start(runner.prepare(_msgs(4)))
        assert log == [] and not started.working  # nothing done before it is awaited
        ticker = _ticking(log)
        await started.ready()
        ticker.cancel()
        steps = [i for i, e in enumerate(log) if e[0] == "step"]
        assert len(steps) == 3
        assert all(("tick",) in log[a:b] for a, b in zip(steps, steps[1:]))  # the loop ran in between
        assert started.result().counts.received == 4
        assert ("closed",) in log
    asyncio.run(go())


def test_in_loop_runner_step_failure_is_a_pipeline_error_with_blame_only():
    async def go():
        log: list = []
        runner = InLoopRunner(lambda snap: _stepped_pipeline(log, fail_at=1))
        await runner.build(SNAP)
        started = runner.start(runner.prepare(_msgs(4)))
        with pytest.raises(PipelineError) as failed:
            await started.ready()
        assert failed.value.blame.startswith("ZeroDivisionError at test_runner.py:")
        assert "35" not in failed.value.blame
        assert log == [("step", 0), ("closed",)]
    asyncio.run(go())


def test_in_loop_runner_cancelled_between_steps_closes_the_pipeline_steps():
    """A cancelled batch (the worker stopping) runs the pipeline's finally clauses at
    once (the real pipeline re-enables the garbage collector there)."""
    async def go():
        log: list = []
        runner = InLoopRunner(lambda snap: _stepped_pipeline(log))
        await runner.build(SNAP)
        task = asyncio.create_task(runner.start(runner.prepare(_msgs(4))).ready())
        while ("step", 1) not in log:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log[-1] == ("closed",) and ("step", 2) not in log
    asyncio.run(go())


def test_the_worker_command_runs_the_pipeline_in_a_child_unless_told_not_to():
    import argparse

    from fleetcloak.streams.cmd_worker import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--broker", "h:1"]).pipeline_process is True
    assert parser.parse_args(["--broker", "h:1", "--no-pipeline-process"]).pipeline_process is False
    assert parser.parse_args(["--broker", "h:1", "--pipeline-process"]).pipeline_process is True
    assert LoopSettings("h:1").pipeline_process is False  # embedding code keeps its pipeline in-process
    assert parser.parse_args(["--broker", "h:1"]).max_records == LoopSettings("h:1").max_records  # one default

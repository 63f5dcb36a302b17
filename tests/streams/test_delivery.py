"""The delivery rule on the real broker: a source offset is committed only after its
outputs are acknowledged; a bug, a SIGKILL or a rebalance never loses a record."""
from __future__ import annotations

import asyncio
import collections
import signal

import pytest

from fleetcloak.streams.loop import BatchLoop, DeliveryFailed, LoopSettings, PipelineFailed, await_delivery
from fleetcloak.streams.seam import Counts, OutputBlock, Pipeline, ProcessResult, passthrough_factory
from fleetcloak.streams.topicio import unique_name

pytestmark = pytest.mark.broker


def _inputs(n: int, devices: int = 50) -> list[tuple[bytes, bytes, list]]:
    return [(b"35%013d" % (i % devices), b"msg-%07d" % i, [("received_at", b"%d" % i)]) for i in range(n)]


def _report(name: str, n_in: int, values: list[bytes]) -> int:
    dups = len(values) - len(set(values))
    print(f"\n{name}: {n_in} inputs, {len(values)} outputs, {len(set(values))} distinct, {dups} duplicates")
    return dups


def _run_until(loop: BatchLoop, done, timeout: float = 60.0) -> None:
    """Run a BatchLoop until done(loop) holds, then stop it cleanly (or let it raise)."""
    async def go():
        task = asyncio.create_task(loop.run())
        deadline = asyncio.get_running_loop().time() + timeout
        while not task.done() and not done(loop):
            if asyncio.get_running_loop().time() > deadline:
                task.cancel()
                raise AssertionError("loop did not finish in time")
            await asyncio.sleep(0.02)
        loop.request_stop()
        await task
    asyncio.run(go())


@pytest.mark.parametrize("stepped", [False, True], ids=["process", "steps"])
def test_process_raising_stops_without_committing_then_restart_delivers_all(broker, new_topic, topic_io, stepped):
    """`stepped`: the pipeline has `steps` (processed a step at a time when awaited, the
    event loop turning in between, as the real pipeline is) and raises after a pause."""
    n = 3000
    src = new_topic("raw", 2)
    dst = unique_name("out")
    group = unique_name("grp")
    topic_io.produce(src, _inputs(n))

    good_last: dict[int, int] = {}
    calls = collections.Counter()

    def failing_factory(control):
        passthrough = passthrough_factory(dst)(control)

        def process(batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise ZeroDivisionError(f"a bug in the pipeline, choked on {batch[0].key!r}")
            result = passthrough.process(batch)
            for m in batch:  # this batch will be delivered and committed
                good_last[m.partition] = max(good_last.get(m.partition, -1), m.offset)
            return result

        def steps(batch):
            yield  # the loop turns: deliveries of the batch before move on
            return process(batch)
        return Pipeline(process, passthrough.topics, steps=steps if stepped else None)

    settings = LoopSettings(broker, input_topic=src, group_id=group, max_records=250)
    first = BatchLoop(settings, failing_factory)
    with pytest.raises(PipelineFailed, match="ZeroDivisionError at test_delivery.py") as failed:
        _run_until(first, lambda lp: False)
    assert "3500000000" not in str(failed.value)  # the exception message (it quotes an IMEI) is not repeated

    committed = topic_io.committed(group, src)
    # exactly the batches that were delivered are committed; nothing of the failed one or after
    assert committed == {p: off + 1 for p, off in good_last.items()}
    assert sum(committed.values()) < n
    delivered_first = topic_io.read_all(dst)
    assert len(delivered_first) == sum(committed.values())
    assert not any(b"35000000000" in line for line in first.metrics.exposition().splitlines())  # no IMEI in metrics

    second = BatchLoop(settings, passthrough_factory(dst))
    _run_until(second, lambda lp: lp.consumed >= n - sum(committed.values()))
    assert topic_io.committed(group, src) == topic_io.true_end_offsets(src)
    values = [r.value for r in topic_io.read_all(dst)]
    assert set(values) == {v for _, v, _ in _inputs(n)}
    assert _report("process raised", n, values) == 0  # the failed batch produced nothing
    assert second.metrics.totals.balanced()


def test_failed_delivery_raises(tmp_path):
    """The broker going away mid-batch: the delivery futures fail, and await_delivery
    raises (so the loop never reaches the commit). A private broker, so the session's survives."""
    from aiokafka import AIOKafkaProducer

    from fleetcloak.streams.broker import EmbeddedBroker
    from fleetcloak.streams.topicio import create_topic

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as doomed:
        create_topic(doomed.bootstrap, "out", 2)

        async def go():
            loop = BatchLoop(LoopSettings(doomed.bootstrap), passthrough_factory("unused"))
            loop._producer = AIOKafkaProducer(bootstrap_servers=doomed.bootstrap, acks="all",
                                              request_timeout_ms=1500, retry_backoff_ms=100)
            await loop._producer.start()
            try:
                futures = await loop._produce(ProcessResult(
                    [("out", b"k%d" % i, b"x" * 100, None) for i in range(100)], Counts(),
                    [OutputBlock("out", [b"k%d" % i for i in range(100)], [b"z" * 100] * 100)]))
                await await_delivery(futures)  # fine, singles and blocks
                doomed.stop()
                with pytest.raises(DeliveryFailed, match="not delivered"):
                    futures = await loop._produce(ProcessResult([], Counts(), [OutputBlock("out", [b"k"], [b"y" * 100])]))
                    await asyncio.wait_for(await_delivery(futures), 30)
            finally:
                await loop._producer.stop()
        asyncio.run(go())


def test_topics_known_at_start_stay_deliverable_when_a_new_topic_appears(broker, new_topic, topic_io):
    """aiokafka drops from its metadata the topics it found in its first all-topics answer
    as soon as it tracks another one; the loop tracks every topic it produces to, so a
    dead letter pending while a new tenant's topic is created is still delivered."""
    from aiokafka import AIOKafkaProducer

    from fleetcloak.streams.topics import TopicSpec

    old = new_topic("old", 1)
    new = unique_name("new")

    async def go():
        loop = BatchLoop(LoopSettings(broker), passthrough_factory("unused"))
        loop._producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", request_timeout_ms=4000)
        await loop._producer.start()  # its first metadata lists every topic, `old` among them
        try:
            await loop._ensure_topics([TopicSpec(new, 2, {})])  # created after the producer started
            futures = await loop._produce(ProcessResult([(old, b"k", b"dead letter", [("h", b"1")])], Counts(),
                                                        [OutputBlock(new, [b"a", b"b"], [b"1", b"2"])]))
            await asyncio.wait_for(await_delivery(futures), 20)
            await loop._producer.client.force_metadata_update()
            assert {old, new} <= loop._producer.client.cluster.topics()  # neither vanished
            futures = await loop._produce(ProcessResult([(old, b"k", b"another", None)], Counts()))
            await asyncio.wait_for(await_delivery(futures), 20)
        finally:
            await loop._producer.stop()
    asyncio.run(go())
    assert [r.value for r in topic_io.read_all(old)] == [b"dead letter", b"another"]
    assert sorted(r.value for r in topic_io.read_all(new)) == [b"1", b"2"]


def test_sigkill_mid_stream_then_restart_delivers_every_record(broker, new_topic, topic_io, worker_process, wait_until):
    n = 40_000
    src = new_topic("raw", 4)
    dst = unique_name("out")
    group = unique_name("grp")
    topic_io.produce(src, _inputs(n, devices=200))
    args = ("--input-topic", src, "--group", group, "--pipeline", "passthrough", "--passthrough-topic", dst,
            "--max-records", "100", "--session-timeout-ms", "6000")

    w1 = worker_process(*args)
    w1.wait_health(lambda h: h["consumed"] >= 4000, timeout=40)
    w1.signal(signal.SIGKILL)
    assert w1.wait() == -signal.SIGKILL
    before = sum(topic_io.committed(group, src).values())
    assert 0 < before < n, before  # killed mid-stream

    w2 = worker_process(*args)
    end = topic_io.true_end_offsets(src)
    wait_until(lambda: topic_io.committed(group, src) == end, timeout=60, what="the restarted worker to catch up")
    w2.signal(signal.SIGTERM)
    assert w2.wait() == 0, w2.log()[-2000:]
    assert "summary:" in w2.log() and "balanced" in w2.log()

    values = [r.value for r in topic_io.read_all(dst)]
    assert set(values) == {v for _, v, _ in _inputs(n, devices=200)}
    _report("SIGKILL mid-stream", n, values)


def test_sigterm_mid_stream_finishes_and_commits_the_batch_in_hand(broker, new_topic, topic_io, worker_process):
    n = 40_000
    src = new_topic("raw", 4)
    dst = unique_name("out")
    group = unique_name("grp")
    topic_io.produce(src, _inputs(n))
    w = worker_process("--input-topic", src, "--group", group, "--pipeline", "passthrough", "--passthrough-topic", dst,
                       "--max-records", "100")
    w.wait_health(lambda h: h["consumed"] >= 2000, timeout=40)
    w.signal(signal.SIGTERM)
    assert w.wait() == 0, w.log()[-2000:]
    committed = sum(topic_io.committed(group, src).values())
    delivered = topic_io.read_all(dst)
    assert 0 < committed < n
    # a clean stop commits exactly what it delivered: nothing in flight is lost or left uncommitted
    assert len(delivered) == committed == len({r.value for r in delivered})
    assert "summary: messages consumed=%d produced=%d" % (committed, committed) in w.log()


def test_two_workers_share_partitions_and_hand_over_without_loss(broker, new_topic, topic_io, worker_process, wait_until):
    src = new_topic("raw", 4)
    dst = unique_name("out")
    group = unique_name("grp")
    first, second, third = _inputs(30_000, devices=300)[:10_000], _inputs(30_000, 300)[10_000:20_000], \
        _inputs(30_000, 300)[20_000:]
    topic_io.produce(src, first)
    args = ("--input-topic", src, "--group", group, "--pipeline", "passthrough", "--passthrough-topic", dst,
            "--max-records", "200", "--session-timeout-ms", "6000")

    a = worker_process(*args, "--producers", "1")  # one producer, the other the default 4
    b = worker_process(*args)
    ha = a.wait_health(lambda h: len(h["partitions"]) == 2, timeout=45)
    hb = b.wait_health(lambda h: len(h["partitions"]) == 2, timeout=45)
    assert set(ha["partitions"]).isdisjoint(hb["partitions"])  # shared, not duplicated
    topic_io.produce(src, second)
    wait_until(lambda: (a.health() or {}).get("consumed", 0) > 0 and (b.health() or {}).get("consumed", 0) > 0,
               timeout=30, what="both workers to consume")

    a.signal(signal.SIGTERM)  # leaves the group after finishing and committing its batch
    assert a.wait() == 0, a.log()[-2000:]
    b.wait_health(lambda h: len(h["partitions"]) == 4, timeout=45)
    topic_io.produce(src, third)
    end = topic_io.true_end_offsets(src)
    wait_until(lambda: topic_io.committed(group, src) == end, timeout=60, what="the remaining worker to catch up")
    b.signal(signal.SIGTERM)
    assert b.wait() == 0, b.log()[-2000:]

    values = [r.value for r in topic_io.read_all(dst)]
    assert set(values) == {v for _, v, _ in first + second + third}
    _report("two workers, one leaves", 30_000, values)


def test_worker_cli_exits_nonzero_and_commits_nothing_when_process_raises(
        broker, new_topic, topic_io, worker_process, tmp_path, monkeypatch):
    (tmp_path / "buggy_pipeline.py").write_text(
        "from fleetcloak.streams.seam import passthrough_factory, Pipeline\n"
        "def factory():\n"
        "    def build(control):\n"
        "        def process(batch):\n"
        "            raise RuntimeError('bug')\n"
        "        return Pipeline(process)\n"
        "    return build\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    src = new_topic("raw", 2)
    group = unique_name("grp")
    topic_io.produce(src, _inputs(500))
    w = worker_process("--input-topic", src, "--group", group, "--pipeline", "buggy_pipeline:factory",
                       "--session-timeout-ms", "6000")
    assert w.wait(60) == 1
    assert "WITHOUT committing" in w.log()
    assert topic_io.committed(group, src) == {}


def test_worker_until_drained_exits_by_itself(broker, new_topic, topic_io, worker_process):
    n = 3000
    src = new_topic("raw", 2)
    dst = unique_name("out")
    group = unique_name("grp")
    topic_io.produce(src, _inputs(n))
    w = worker_process("--input-topic", src, "--group", group, "--pipeline", "passthrough", "--passthrough-topic", dst,
                       "--until-drained")
    assert w.wait(60) == 0, w.log()[-2000:]
    assert topic_io.committed(group, src) == topic_io.true_end_offsets(src)
    assert len(topic_io.read_all(dst)) == n
    assert "input drained" in w.log()


def test_outputs_go_out_without_waiting_in_order_per_partition_over_several_producers(broker, new_topic, topic_io):
    """_produce returns before the broker answered (the next batch is processed meanwhile);
    batches of one partition reach it in the order produced, across calls, though its
    batches queue behind each other; partitions are spread over the producers."""
    from aiokafka import AIOKafkaProducer

    from fleetcloak.streams.loop import _PartitionFeeds

    topic = new_topic("spread", 4)

    async def go():
        settings = LoopSettings(broker, producer_batch_bytes=2048, producer_connections=2)
        loop = BatchLoop(settings, passthrough_factory("unused"))
        loop._producers = [AIOKafkaProducer(bootstrap_servers=broker, acks="all", request_timeout_ms=10_000)
                           for _ in range(2)]
        loop._producer = loop._producers[0]
        for p in loop._producers:
            await p.start()
        try:
            futures = []
            for call in range(3):  # three batches' outputs, ~20 record batches per partition each
                keys = [b"dev-%d" % (i % 8) for i in range(400)]
                values = [b"%d:%04d:" % (call, i) + b"x" * 100 for i in range(400)]
                futures += await loop._produce(ProcessResult([], Counts(), [
                    OutputBlock(topic, keys[:200], values[:200]), OutputBlock(topic, keys[200:], values[200:])]))
            assert not all(f.done() for f in futures)  # handed over, not waited for
            await asyncio.wait_for(await_delivery(futures), 60)
            feeds = loop._feeds
            assert isinstance(feeds, _PartitionFeeds) and not feeds._live and not feeds._tails
        finally:
            for p in loop._producers:
                await p.stop()
    asyncio.run(go())
    by_partition: dict = collections.defaultdict(list)
    for r in topic_io.read_all(topic):
        by_partition[r.partition].append(r.value.split(b":")[:2])
    assert sum(map(len, by_partition.values())) == 1200
    for values in by_partition.values():
        assert values == sorted(values)  # (call, index): produced order, per partition


def test_stopping_fails_the_outputs_not_yet_handed_over():
    """A worker stopping without settling (a failure): batches still queued behind their
    partition's earlier ones are never handed over, and their futures say so."""
    from fleetcloak.streams.loop import _PartitionFeeds

    class Stuck:  # a producer whose partition never drains
        async def send_batch(self, batch, topic, *, partition):
            await asyncio.Event().wait()

    async def go():
        feeds = _PartitionFeeds([Stuck()])
        futures = feeds.send("t", 0, ["b1", "b2"]) + feeds.send("t", 0, ["b3"])
        await asyncio.sleep(0.01)
        await feeds.cancel()
        assert all(f.done() for f in futures)
        with pytest.raises(DeliveryFailed, match="cancelled"):
            await await_delivery(futures)
    asyncio.run(go())


def test_loop_settings_refuse_no_producer_and_an_unknown_codec():
    with pytest.raises(ValueError, match="producer_connections must be at least 1, got 0"):
        LoopSettings("127.0.0.1:9092", producer_connections=0)
    with pytest.raises(ValueError, match="compression must be one of none, lz4, zstd, gzip, got 'brotli'"):
        LoopSettings("127.0.0.1:9092", compression="brotli")

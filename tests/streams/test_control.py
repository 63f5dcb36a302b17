"""Control-plane tables on the real broker: read to the end despite Tansu's ListOffsets,
tombstones, and live follow."""
import asyncio
import time

import pytest

from fleetcloak.streams.control import CompactedTable, TableReader, publish, control_producer, read_tables

pytestmark = pytest.mark.broker


def test_table_apply_and_tombstone():
    seen = []
    t = CompactedTable("x", lambda table, k, v: seen.append((k, v)))
    assert t.apply(b"a", b"1") and t.apply(b"a", b"2")
    assert not t.apply(b"a", b"2")          # same value: no change, no callback
    assert t.apply(b"a", None) and b"a" not in t
    assert not t.apply(b"missing", None)    # tombstone of an unknown key
    assert not t.apply(None, b"keyless")
    assert seen == [(b"a", b"1"), (b"a", b"2"), (b"a", None)]


def test_reads_to_the_end_although_end_offsets_is_wrong(broker, new_topic):
    """Batches of several records make Tansu's ListOffsets(latest) answer the last batch's
    base offset + 1. The high-watermark reader must still see every record."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = new_topic("ctl", 1, {"cleanup.policy": "compact"})

    async def scenario():
        producer = control_producer(broker)
        await producer.start()
        try:
            # three sends per round without awaiting in between: they share a batch
            for rnd in range(5):
                futures = [await producer.send(topic, key=b"k%d" % i, value=b"v%d-%d" % (i, rnd)) for i in range(3)]
                await asyncio.gather(*futures)
            await publish(producer, topic, [(b"k1", None)])                   # tombstone
            last = await publish(producer, topic, [(b"k7", b"a"), (b"k8", b"b"), (b"k9", b"c")])
        finally:
            await producer.stop()
        true_end = last[-1].offset + 1

        consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None)
        await consumer.start()
        tp = TopicPartition(topic, 0)
        listed = (await consumer.end_offsets([tp]))[tp]
        await consumer.stop()

        table = CompactedTable(topic)
        reader = TableReader(broker, [table])
        await reader.start(follow=False)
        await reader.stop()
        return true_end, listed, table

    true_end, listed, table = asyncio.run(scenario())
    assert true_end == 19
    # What a naive catch-up would have trusted (measured on Tansu 0.6: 17, base offset of
    # the last 3-record batch + 1). On Apache Kafka the two agree.
    print(f"\nListOffsets(latest)={listed}, high-watermark end={true_end}")
    assert listed <= true_end
    assert table.applied == true_end
    assert table.snapshot() == {b"k0": b"v0-4", b"k2": b"v2-4", b"k7": b"a", b"k8": b"b", b"k9": b"c"}


def test_empty_topics_catch_up_at_once(broker, new_topic):
    topics = [new_topic("ctl", 1, {"cleanup.policy": "compact"}) for _ in range(3)]
    t0 = time.monotonic()
    state = asyncio.run(read_tables(broker, topics, timeout=10))
    assert state == {t: {} for t in topics}
    assert time.monotonic() - t0 < 5


def test_follows_live_changes(broker, new_topic):
    topic = new_topic("ctl", 1, {"cleanup.policy": "compact"})

    async def scenario():
        changes = asyncio.Queue()
        table = CompactedTable(topic, lambda t, k, v: changes.put_nowait((k, v, time.monotonic())))
        reader = TableReader(broker, [table])
        await reader.start()
        producer = control_producer(broker)
        await producer.start()
        delays = []
        try:
            for key, value in [(b"p", b"1"), (b"p", b"2"), (b"p", None)]:
                sent = time.monotonic()
                await publish(producer, topic, [(key, value)])
                k, v, at = await asyncio.wait_for(changes.get(), 5)
                assert (k, v) == (key, value)
                delays.append(at - sent)
        finally:
            await producer.stop()
            await reader.stop()
        return table, delays

    table, delays = asyncio.run(scenario())
    assert len(table) == 0
    print(f"\nlive follow delays: {[round(d * 1000) for d in delays]} ms")
    assert max(delays) < 2.0, delays

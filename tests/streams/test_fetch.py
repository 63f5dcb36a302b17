"""streams/fetch.py: a consumer reading its fetched batches in C gives exactly what
aiokafka's own reader gives (records, offsets, positions, errors), on a real broker and on
fetched bytes taken from it."""
from __future__ import annotations

import asyncio
import random
import struct

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord

from fleetcloak.streams import fetch
from fleetcloak.streams.fetch import FastPartitionRecords, _Fetched, use_fast_fetch
from fleetcloak.streams.recordbatch import FetchedRecord

FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value", "checksum",
          "serialized_key_size", "serialized_value_size", "headers")
TP = TopicPartition("t.fetch", 3)


def attrs(records) -> list[tuple]:
    return [tuple(getattr(r, f) for f in FIELDS) for r in records]


def some_records(rng: random.Random, n: int) -> list[tuple]:
    """(key, value, headers): None and empty keys and values, 0-3 headers (a None value too)."""
    out = []
    for i in range(n):
        key = rng.choice([None, b"", b"%015d" % rng.randrange(10 ** 15)])
        value = rng.choice([None, b"", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))])
        headers = [("received_at", b"%d" % i), ("transport", rng.choice([b"tcp", b"udp", None])),
                   ("h\u00e9", b"x" * rng.randrange(3))][:rng.randrange(4)]
        out.append((key, value, headers))
    return out


# --- on fetched bytes ---------------------------------------------------------------

def batch(base_offset: int, records, *, compression: int = 0, ts: int = 1_718_000_000_000) -> bytes:
    """One batch as aiokafka's producer writes it, with the offset the broker would give it."""
    b = BatchBuilder(1 << 24, compression)
    for i, (k, v, h) in enumerate(records):
        assert b.append(timestamp=ts + 7 * i, key=k, value=v, headers=h) is not None
    buf = bytearray(b._build())
    struct.pack_into(">q", buf, 0, base_offset)  # not covered by the CRC
    return bytes(buf)


def log_of(batches_records, *, compressions=None) -> bytes:
    out, offset = [], 0
    for i, records in enumerate(batches_records):
        out.append(batch(offset, records, compression=(compressions or {}).get(i, 0)))
        offset += len(records)
    return b"".join(out)


def aiokafka_reads(data: bytes, fetch_offset: int, max_records=None, check_crcs=True):
    """What aiokafka's PartitionRecords hands out, in chunks of max_records, and its
    next_fetch_offset after each chunk."""
    pr = PartitionRecords(TP, MemoryRecords(data), None, fetch_offset, None, None, check_crcs, READ_UNCOMMITTED)
    chunks = []
    while True:  # as FetchResult.getall
        chunk = []
        for r in pr:
            chunk.append(r)
            if max_records is not None and len(chunk) >= max_records:
                break
        else:
            if chunk:
                chunks.append((attrs(chunk), pr.next_fetch_offset))
            return chunks, pr.next_fetch_offset
        chunks.append((attrs(chunk), pr.next_fetch_offset))


def our_reads(data: bytes, fetch_offset: int, max_records=None, check_crcs=True):
    pr = FastPartitionRecords(TP, _Fetched(data), None, fetch_offset, None, None, check_crcs, READ_UNCOMMITTED)
    chunks = []
    while True:
        chunk = pr.take(max_records)
        if not chunk:
            assert pr.exhausted
            return chunks, pr.next_fetch_offset
        assert all(type(r) in (FetchedRecord, ConsumerRecord) for r in chunk)  # the latter: aiokafka's batches
        chunks.append((attrs(chunk), pr.next_fetch_offset))


def flat(chunks):
    return [r for c, _ in chunks for r in c]


def test_same_records_and_positions_as_aiokafka_over_many_batches():
    rng = random.Random(1)
    data = log_of([some_records(rng, rng.randrange(1, 40)) for _ in range(30)] + [[]])
    n = len(aiokafka_reads(data, 0)[0][0][0])
    assert n > 300
    for fetch_offset in (0, 1, 17, n // 2, n - 1, n, n + 5):
        want = aiokafka_reads(data, fetch_offset)
        got = our_reads(data, fetch_offset)
        assert flat(got[0]) == flat(want[0])
        assert got[1] == want[1]
    # cut by max_records: the same chunks, and the same position after each, but for the
    # last: once the last record is out, ours is at the final position (after the empty
    # batch here) at once, aiokafka gets there on the next call
    for max_records in (1, 7, 100):
        (got, got_end), (want, want_end) = our_reads(data, 3, max_records), aiokafka_reads(data, 3, max_records)
        assert got[:-1] == want[:-1] and got[-1][0] == want[-1][0] and got_end == want_end
        assert got[-1][1] == got_end == want_end >= want[-1][1]


def test_fetch_offset_in_the_middle_of_a_batch_skips_its_earlier_records():
    data = log_of([[(b"k%d" % i, b"v%d" % i, []) for i in range(10)], [(b"x", b"y", [])]])
    chunks, position = our_reads(data, 6)
    assert [r[2] for r in flat(chunks)] == [6, 7, 8, 9, 10]
    assert position == 11


def test_gzip_batches_between_plain_ones_are_read_by_aiokafka():
    rng = random.Random(2)
    recs = [some_records(rng, 20) for _ in range(6)]
    data = log_of(recs, compressions={1: 1, 2: 1, 5: 1})  # 1 = gzip
    for fetch_offset in (0, 25, 45, 110):
        for max_records in (None, 13):
            want, got = aiokafka_reads(data, fetch_offset, max_records), our_reads(data, fetch_offset, max_records)
            assert flat(got[0]) == flat(want[0]) and got[1] == want[1]
    assert len(flat(our_reads(data, 0)[0])) == 120


def test_control_and_legacy_batches_go_to_aiokafka():
    data = bytearray(log_of([[(b"a", b"1", [])], [(b"b", b"2", [])], [(b"c", b"3", [])]]))
    # mark the second batch a control batch (attributes bit 5) and fix its CRC
    second = len(batch(0, [(b"a", b"1", [])]))
    struct.pack_into(">h", data, second + 21, 0x20)
    from fleetcloak.streams import _recordbatch
    end = second + 12 + struct.unpack_from(">i", data, second + 8)[0]
    struct.pack_into(">I", data, second + 17, _recordbatch._crc32c(bytes(data[second + 21:end])))
    want, got = aiokafka_reads(bytes(data), 0), our_reads(bytes(data), 0)
    assert flat(got[0]) == flat(want[0]) and [r[5] for r in flat(got[0])] == [b"a", b"c"]
    assert got[1] == want[1] == 3
    # a v1 message set
    from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
    legacy = LegacyRecordBatchBuilder(1, 0, 1 << 20)
    legacy.append(0, timestamp=5, key=b"k", value=b"v")
    legacy.append(1, timestamp=6, key=b"k2", value=b"w")
    data = bytes(legacy.build())  # (aiokafka's Cython reader fails on v1 followed by v2)
    want, got = aiokafka_reads(data, 0), our_reads(data, 0)
    assert flat(got[0]) == flat(want[0]) and len(flat(got[0])) == 2 and got[1] == want[1]


def test_a_bad_crc_raises_corrupt_record_after_the_records_before_it():
    rng = random.Random(3)
    data = bytearray(log_of([some_records(rng, 5), some_records(rng, 5), some_records(rng, 5)]))
    second = len(batch(0, some_records(random.Random(3), 5)))
    data[second + 70] ^= 0x01  # a byte inside the second batch's records
    data = bytes(data)
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        aiokafka_reads(data, 0)
    pr = FastPartitionRecords(TP, _Fetched(data), None, 0, None, None, True, READ_UNCOMMITTED)
    assert [r.offset for r in pr.take()] == [0, 1, 2, 3, 4]
    with pytest.raises(CorruptRecordException, match=r"Invalid CRC - TopicPartition\(topic='t.fetch', partition=3\)"):
        pr.take()
    assert pr.next_fetch_offset == 5  # a refetch starts at the bad batch and raises again
    assert pr.take() == [] and pr.exhausted
    # the first batch bad: raises at once, as aiokafka
    pr = FastPartitionRecords(TP, _Fetched(data[second:]), None, 5, None, None, True, READ_UNCOMMITTED)
    with pytest.raises(CorruptRecordException):
        pr.take(3)
    # check_crcs=False reads it, as aiokafka does
    assert flat(our_reads(data, 0, check_crcs=False)[0]) == flat(aiokafka_reads(data, 0, check_crcs=False)[0])


def test_truncated_and_garbage_buffers_never_crash():
    rng = random.Random(4)
    data = log_of([some_records(rng, 8) for _ in range(4)])
    for cut in range(len(data) + 1):  # a fetch cut anywhere: the complete batches, as aiokafka
        want, got = aiokafka_reads(data[:cut], 0), our_reads(data[:cut], 0)
        assert flat(got[0]) == flat(want[0]) and got[1] == want[1]
    magic_bytes, at = set(), 0
    while at < len(data):
        magic_bytes.add(at + 16)
        at += 12 + struct.unpack_from(">i", data, at + 8)[0]
    for trial in range(3000):
        buf = bytearray(data)
        hit = {rng.randrange(len(buf)) for _ in range(rng.randrange(1, 4))}
        for i in hit:
            buf[i] = rng.randrange(256)
        buf = bytes(buf[:rng.randrange(len(buf) + 1)]) if trial % 3 == 0 else bytes(buf)
        check = trial % 2 == 0
        try:
            want = ("ok", aiokafka_reads(buf, 0, check_crcs=check))
        except Exception as exc:  # aiokafka's own errors on garbage
            want = ("error", type(exc))
        try:
            got = ("ok", our_reads(buf, 0, check_crcs=check))
        except Exception as exc:
            got = ("error", type(exc))
        if want[0] == "ok" and got[0] == "error" and hit & magic_bytes:
            # a batch's magic byte (not under the CRC) made garbage: aiokafka's Cython reader
            # takes the magic of the first batch of a fetch for all of them, ours hands that
            # batch to it alone, which then raises
            assert got[1] is CorruptRecordException
        elif want[0] == "ok":
            assert got[0] == "ok", (trial, got)
            assert flat(got[1][0]) == flat(want[1][0]) and got[1][1] == want[1][1], trial
        else:  # the same error class, perhaps after handing out the records before it
            assert got[0] == "ok" or got[1] is want[1], (trial, got, want)
    for garbage in (b"", b"\x00" * 11, b"\xff" * 200, bytes(rng.randrange(256) for _ in range(5000))):
        try:
            want = aiokafka_reads(garbage, 0)
        except Exception as exc:
            with pytest.raises(type(exc)):
                our_reads(garbage, 0)
        else:
            assert our_reads(garbage, 0) == want


# --- on a real broker -----------------------------------------------------------------

async def _produce(broker, topic, partitions, records, **producer_kw):
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=False, **producer_kw)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v, headers=h, partition=i % partitions)
                   for i, (k, v, h) in enumerate(records) if (k, v) != (None, None)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _consume(broker, topic, partitions, n, *, fast, starts=None, max_records=None, fetched=None):
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, max_partition_fetch_bytes=64 << 10)
    await consumer.start()
    try:
        if fast:
            assert use_fast_fetch(consumer) is True
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, (starts or {}).get(tp.partition, 0))
        got = []
        for _ in range(2000):
            batch = await consumer.getmany(timeout_ms=200, max_records=max_records)
            for tp, records in batch.items():
                assert [r.offset for r in records] == sorted(r.offset for r in records)
                got += records
            if len(got) >= n:
                break
        positions = {tp.partition: await consumer.position(tp) for tp in tps}
        return got, positions
    finally:
        await consumer.stop()


def by_partition(records):
    return sorted(attrs(records), key=lambda r: (r[1], r[2]))


@pytest.mark.broker
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_consumer_reads_exactly_what_aiokafka_reads(broker, new_topic, monkeypatch, compression):
    rng = random.Random(5)
    topic = new_topic("fetch", 3)
    records = [r for r in some_records(rng, 3000) if r[:2] != (None, None)]  # aiokafka's send() wants one
    asyncio.run(_produce(broker, topic, 3, records, linger_ms=20, max_batch_size=8192, compression_type=compression))

    fetched: list[bytes] = []

    class Capturing(_Fetched):
        __slots__ = ()

        def __init__(self, data):
            super().__init__(data)
            fetched.append(data)

    monkeypatch.setattr(fetch, "_Fetched", Capturing)
    want, want_pos = asyncio.run(_consume(broker, topic, 3, len(records), fast=False))
    got, got_pos = asyncio.run(_consume(broker, topic, 3, len(records), fast=True, max_records=500))
    assert len(got) == len(records)
    assert all(type(r) is FetchedRecord for r in got) == (compression is None)
    assert by_partition(got) == by_partition(want)
    assert got_pos == want_pos
    assert [(r[5], r[6], list(r[10])) for r in by_partition(got)] == \
        [rec for p in range(3) for i, rec in enumerate(records) if i % 3 == p]

    # the bytes fetched, read both ways from several fetch offsets
    assert len(fetched) >= 3
    for data in fetched:
        for fetch_offset in (0, 100, 1001):
            want_chunks, want_next = aiokafka_reads(data, fetch_offset)
            got_chunks, got_next = our_reads(data, fetch_offset)
            assert flat(got_chunks) == flat(want_chunks) and got_next == want_next


@pytest.mark.broker
def test_consuming_from_the_middle_of_a_batch(broker, new_topic):
    topic = new_topic("fetch-mid", 1)
    records = [(b"k%d" % i, b"v%d" % i, [("n", b"%d" % i)]) for i in range(400)]
    asyncio.run(_produce(broker, topic, 1, records, linger_ms=50, max_batch_size=1 << 20))
    got, pos = asyncio.run(_consume(broker, topic, 1, 400 - 137, fast=True, starts={0: 137}))
    want, want_pos = asyncio.run(_consume(broker, topic, 1, 400 - 137, fast=False, starts={0: 137}))
    assert [r.offset for r in got] == list(range(137, 400))
    assert [(r.key, r.value, r.headers) for r in got] == [(k, v, tuple(h)) for k, v, h in records[137:]]
    assert attrs(got) == attrs(want) and pos == want_pos == {0: 400}


@pytest.mark.broker
def test_use_fast_fetch_needs_a_started_consumer_and_leaves_deserializing_consumers_alone(broker):
    async def run():
        consumer = AIOKafkaConsumer(bootstrap_servers=broker)
        with pytest.raises(RuntimeError, match="started consumer"):
            use_fast_fetch(consumer)
        deserializing = AIOKafkaConsumer(bootstrap_servers=broker, value_deserializer=bytes.decode)
        committed = AIOKafkaConsumer(bootstrap_servers=broker, isolation_level="read_committed")
        for c in (deserializing, committed):
            await c.start()
            try:
                await c.topics()  # (stop() right after start() trips an aiokafka race)
                assert use_fast_fetch(c) is False
                assert "_proc_fetch_request" not in vars(c._fetcher)
            finally:
                await c.stop()

    asyncio.run(run())


@pytest.mark.broker
def test_missing_aiokafka_internals_fail_loudly(broker, monkeypatch):
    async def run():
        consumer = AIOKafkaConsumer(bootstrap_servers=broker)
        await consumer.start()
        try:
            await consumer.topics()
            from aiokafka.consumer.fetcher import FetchResult
            monkeypatch.delattr(FetchResult, "_update_position")
            with pytest.raises(RuntimeError, match=r"aiokafka 0\.14\.0.*FetchResult\._update_position is missing"):
                use_fast_fetch(consumer)
        finally:
            monkeypatch.undo()
            await consumer.stop()

    asyncio.run(run())

"""Prebuilt RecordBatch v2 buffers: byte-identical to aiokafka's producer, readable by its
parser, cut within max_bytes, and accepted by a real broker through send_batch."""
from __future__ import annotations

import asyncio
import gc
import os
import random
import sys

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch
from aiokafka.record._crc32c import crc as crc32c_py
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
    _DefaultRecordBatchBuilderPy,
    _DefaultRecordBatchPy,
)
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.streams import _recordbatch
from fleetcloak.streams.recordbatch import (
    BATCH_OVERHEAD,
    STOP_BAD_CRC,
    STOP_END,
    STOP_FALLBACK,
    FetchedRecord,
    RecordTooLarge,
    build_batches,
    read_batches,
)

TS = 1_718_000_000_123


def aiokafka_batches(keys, values, timestamp_ms, max_bytes) -> list[tuple[bytes, int]]:
    """What aiokafka sends for these records: cut where its builder reports "full", each
    batch's bytes as the producer's BatchBuilder writes them.

    The cuts come from aiokafka's pure-Python builder (a record joins while the batch
    stays <= batch_size). Its Cython builder, the one BatchBuilder uses, keeps batches
    strictly below batch_size instead (see test_cython_builder_cuts_one_byte_earlier).
    """
    cuts, start = [], 0
    builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, max_bytes)
    for i, (k, v) in enumerate(zip(keys, values)):
        if builder.append(i - start, timestamp_ms, k, v, []) is None:
            cuts.append((start, i))
            start = i
            builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, max_bytes)
            assert builder.append(0, timestamp_ms, k, v, []) is not None
    if len(keys) > start:
        cuts.append((start, len(keys)))
    out = []
    for start, end in cuts:
        batch = BatchBuilder(1 << 30, 0)
        for k, v in zip(keys[start:end], values[start:end]):
            assert batch.append(timestamp=timestamp_ms, key=k, value=v) is not None
        out.append((bytes(batch._build()), end - start))
    return out


def ours(keys, values, timestamp_ms=TS, max_bytes=1 << 20) -> list[tuple[bytes, int]]:
    return [(bytes(b._build()), b.record_count()) for b in build_batches(keys, values, timestamp_ms, max_bytes)]


def assert_same_as_aiokafka(keys, values, timestamp_ms=TS, max_bytes=1 << 20) -> list[tuple[bytes, int]]:
    got = ours(keys, values, timestamp_ms, max_bytes)
    want = aiokafka_batches(keys, values, timestamp_ms, max_bytes)
    assert [c for _, c in got] == [c for _, c in want]
    for i, ((g, _), (w, _)) in enumerate(zip(got, want)):
        assert g == w, f"batch {i} differs from aiokafka's first at byte {_first_diff(g, w)}"
    return got


def _first_diff(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def read_back(buf, parser=DefaultRecordBatch) -> list:
    batch = parser(bytes(buf))
    assert batch.validate_crc()
    assert (batch.magic, batch.compression_type, batch.is_transactional, batch.is_control_batch) == (2, 0, False, False)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (-1, -1, 0)
    return list(batch)


# --- byte-for-byte against aiokafka ----------------------------------------------------------

def test_one_record_matches_the_producers_builder_and_aiokafkas_default_builder():
    [(buf, n)] = assert_same_as_aiokafka([b"k"], [b"v"])
    assert n == 1 and len(buf) == BATCH_OVERHEAD + 9
    b = DefaultRecordBatchBuilder(2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                  base_sequence=0, batch_size=1 << 20)
    b.append(0, TS, key=b"k", value=b"v", headers=[])
    assert bytes(b.build()) == buf


def test_base_sequence_is_aiokafkas_0_not_kafkas_no_sequence():
    """The only difference from DefaultRecordBatchBuilder(base_sequence=-1): the field itself
    (bytes 53..57) and the CRC over it (17..21). The producer's BatchBuilder writes 0."""
    [(buf, _)] = ours([b"k"], [b"v"])
    b = DefaultRecordBatchBuilder(2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                  base_sequence=-1, batch_size=1 << 20)
    b.append(0, TS, key=b"k", value=b"v", headers=[])
    theirs = bytes(b.build())
    differ = {i for i in range(len(buf)) if buf[i] != theirs[i]}
    assert {53, 54, 55, 56} <= differ <= {17, 18, 19, 20, 53, 54, 55, 56}
    assert buf[53:57] == b"\0\0\0\0" and theirs[53:57] == b"\xff\xff\xff\xff"
    assert buf[12:16] == b"\xff\xff\xff\xff"  # partitionLeaderEpoch -1, as aiokafka


@pytest.mark.parametrize("keys, values", [
    ([b""], [b""]),
    ([None], [b"value"]),
    ([b"key"], [None]),                                  # tombstone
    ([None], [None]),
    ([b"", None, b"k"], [None, b"", b"v"]),
])
def test_empty_and_none_keys_and_values(keys, values):
    assert_same_as_aiokafka(keys, values)


def test_lengths_around_varint_boundaries():
    # zigzag varints: 1 byte up to 63, 2 up to 8191, 3 up to 1048575; the record length
    # varint crosses those too, a few bytes after the value's.
    sizes = [*range(50, 80), *range(8170, 8200), 1048575, 1048576]
    for n in sizes:
        assert_same_as_aiokafka([b"k" * 40, None, b"x" * (n % 100)], [os.urandom(n), b"y" * n, None], max_bytes=1 << 21)
    assert_same_as_aiokafka([b"k" * n for n in range(50, 80)], [b"v"] * 30)


def test_many_records_offset_deltas_past_63_and_8191():
    n = 20_000
    keys = [b"%05d" % i for i in range(n)]
    values = [b"v" * (i % 7) for i in range(n)]
    [(buf, count)] = assert_same_as_aiokafka(keys, values)
    assert count == n
    records = read_back(buf)
    assert [r.offset for r in records] == list(range(n))


@pytest.mark.parametrize("timestamp_ms", [0, -1, 1, 2**63 - 1, -(2**63)])
def test_timestamps(timestamp_ms):
    [(buf, _)] = assert_same_as_aiokafka([b"a", b"b"], [b"1", b"2"], timestamp_ms)
    assert [r.timestamp for r in read_back(buf)] == [timestamp_ms] * 2


def test_bytes_like_items_encode_as_bytes():
    keys = [bytearray(b"key"), memoryview(b"xkeyx")[1:4], b"key"]
    values = [memoryview(bytearray(b"value")), bytearray(b"value"), b"value"]
    [(buf, _)] = ours(keys, values)
    assert [(r.key, r.value) for r in read_back(buf)] == [(b"key", b"value")] * 3
    assert buf == ours([b"key"] * 3, [b"value"] * 3)[0][0]
    assert ours(tuple(keys), tuple(values)) == ours(keys, values)


record_lists = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=80)),
                                  st.one_of(st.none(), st.binary(max_size=400))), max_size=150)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=record_lists, timestamp_ms=st.integers(-(2**63), 2**63 - 1), max_bytes=st.integers(68, 6000))
def test_hypothesis_same_as_aiokafka_or_too_large(records, timestamp_ms, max_bytes):
    keys = [k for k, _ in records]
    values = [v for _, v in records]
    alone = [aiokafka_batches([k], [v], timestamp_ms, 1 << 20)[0][0] for k, v in records]
    too_large = [i for i, b in enumerate(alone) if len(b) > max_bytes]
    if too_large:
        with pytest.raises(RecordTooLarge) as e:
            build_batches(keys, values, timestamp_ms, max_bytes)
        # the first one met: the cut before it is exactly aiokafka's too
        assert (e.value.index, e.value.size, e.value.max_bytes) == (too_large[0], len(alone[too_large[0]]), max_bytes)
    else:
        got = assert_same_as_aiokafka(keys, values, timestamp_ms, max_bytes)
        assert sum(c for _, c in got) == len(records)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=record_lists, picks=st.lists(st.integers(0, 10**6), max_size=200), max_bytes=st.integers(200, 6000))
def test_rows_take_those_records_in_that_order_as_lists_of_them_would(records, picks, max_bytes):
    """A partition's share of a block by index: the same bytes as its own lists, and a
    record too large is named by its index in keys."""
    import numpy as np

    keys = [k for k, _ in records]
    values = [v for _, v in records]
    rows = np.array([p % len(records) for p in picks] if records else [], dtype=np.int64)
    try:
        want = [bytes(b._buffer) for b in build_batches([keys[i] for i in rows], [values[i] for i in rows], TS, max_bytes)]
    except RecordTooLarge as e:
        with pytest.raises(RecordTooLarge) as got:
            build_batches(keys, values, TS, max_bytes, rows)
        assert got.value.index == rows[e.index] and got.value.size == e.size
        return
    assert [bytes(b._buffer) for b in build_batches(keys, values, TS, max_bytes, rows)] == want


def test_rows_out_of_range_or_not_int64_are_refused():
    import numpy as np

    with pytest.raises(IndexError, match=r"rows\[1\] = 3 is not an index of the 3 keys"):
        build_batches([b"k"] * 3, [b"v"] * 3, TS, 1 << 20, np.array([0, 3]))
    with pytest.raises(IndexError, match="-1"):
        build_batches([b"k"] * 3, [b"v"] * 3, TS, 1 << 20, np.array([-1]))
    with pytest.raises(TypeError, match="int64"):
        _recordbatch.build([b"k"], [b"v"], TS, 1 << 20, np.array([0.0]))
    assert build_batches([b"k"] * 3, [b"v"] * 3, TS, 1 << 20, np.array([], dtype=np.int64)) == []
    with pytest.raises(RecordTooLarge) as got:  # named by its index in keys, not in rows
        build_batches([b"k", b"k", b"v" * 500], [b"v"] * 3, TS, 300, np.array([1, 2]))
    assert got.value.index == 2


# --- reading back with aiokafka's parsers ----------------------------------------------------

@pytest.mark.parametrize("parser", [DefaultRecordBatch, _DefaultRecordBatchPy], ids=["cython", "python"])
def test_read_back_crc_keys_values_offsets(parser):
    rng = random.Random(7)
    keys = [None if i % 11 == 0 else os.urandom(rng.randrange(0, 60)) for i in range(500)]
    values = [None if i % 13 == 0 else os.urandom(rng.randrange(0, 700)) for i in range(500)]
    batches = build_batches(keys, values, TS, 16384)
    assert len(batches) > 5
    records = []
    for b in batches:
        got = read_back(b._build(), parser)
        assert [r.offset for r in got] == list(range(b.record_count()))  # baseOffset 0: offsetDelta
        assert all(r.timestamp == TS and r.headers == [] for r in got)
        records.extend(got)
    assert [(r.key, r.value) for r in records] == list(zip(keys, values))


def test_memory_records_reads_the_batches_back_to_back():
    keys = [b"k%d" % i for i in range(1000)]
    values = [b"v" * (i % 300) for i in range(1000)]
    batches = build_batches(keys, values, TS, 8192)
    records = MemoryRecords(b"".join(bytes(b._build()) for b in batches))
    seen = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc()
        seen.extend((r.key, r.value) for r in batch)
    assert seen == list(zip(keys, values))


# --- cutting ----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_bytes", [68, 200, 1000, 16384, 1 << 20])
def test_cuts_keep_order_and_stay_within_max_bytes(max_bytes):
    rng = random.Random(max_bytes)
    n = 3000
    keys = [None] * n if max_bytes == 68 else [b"%06d" % i for i in range(n)]
    values = [None] * n if max_bytes == 68 else [b"v" * rng.randrange(0, 120) for _ in range(n)]
    batches = build_batches(keys, values, TS, max_bytes)
    assert all(b.size() <= max_bytes for b in batches)
    assert sum(b.record_count() for b in batches) == n
    records = [(r.key, r.value) for b in batches for r in read_back(b._build())]
    assert records == list(zip(keys, values))
    # as few batches as possible: each batch would overflow with the next batch's first record
    assert [(bytes(b._build()), b.record_count()) for b in batches] == aiokafka_batches(keys, values, TS, max_bytes)


def test_the_smallest_batch_holds_one_none_none_record():
    [b] = build_batches([None], [None], TS, 68)
    assert b.size() == 68
    assert len(build_batches([None, None], [None, None], TS, 68)) == 2


def test_a_batch_exactly_max_bytes_is_kept_whole():
    [(buf, _)] = ours([b"k"] * 10, [b"v" * 100] * 10)
    assert len(build_batches([b"k"] * 10, [b"v" * 100] * 10, TS, len(buf))) == 1
    assert len(build_batches([b"k"] * 10, [b"v" * 100] * 10, TS, len(buf) - 1)) == 2


def test_cython_builder_cuts_one_byte_earlier():
    """aiokafka's two builders disagree at the limit: the Python one fills a batch up to
    batch_size bytes, the Cython one (used by the producer) only to batch_size - 1.
    build_batches follows the Python one: every batch <= max_bytes, as few as possible."""
    limit = BATCH_OVERHEAD + 7 * 7  # seven (None, None) records
    cython = BatchBuilder(limit, 0)
    assert sum(cython.append(timestamp=TS, key=None, value=None) is not None for _ in range(7)) == 6
    python = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, limit)
    assert sum(python.append(i, TS, None, None, []) is not None for i in range(7)) == 7
    assert [b.size() for b in build_batches([None] * 7, [None] * 7, TS, limit)] == [limit]


def test_empty_input_gives_no_batches():
    assert build_batches([], [], TS, 1 << 20) == []


def test_a_record_too_large_for_a_batch_names_its_index_and_size():
    values = [b"a" * 100, b"b" * 5000, b"c"]
    with pytest.raises(RecordTooLarge) as e:
        build_batches([b"k"] * 3, values, TS, 4096)
    alone = len(aiokafka_batches([b"k"], [values[1]], TS, 1 << 20)[0][0])
    assert (e.value.index, e.value.size, e.value.max_bytes) == (1, alone, 4096)
    assert isinstance(e.value, ValueError)
    assert f"record 1 needs a {alone}-byte batch" in str(e.value) and "max_bytes=4096" in str(e.value)
    # at the first record of a later batch too (its offsetDelta there is 0)
    with pytest.raises(RecordTooLarge) as e:
        build_batches([b"k"] * 3, [b"a" * 3000, b"b" * 3000, b"c" * 5000], TS, 4096)
    assert e.value.index == 2


# --- wrong arguments: clear errors, never a crash ---------------------------------------------

@pytest.mark.parametrize("keys, values, exc, match", [
    ([b"k", b"k"], [b"v", "text"], TypeError, r"values\[1\] is str; expected bytes"),
    (["k"], [b"v"], TypeError, r"keys\[0\] is str"),
    ([b"k"], [3], TypeError, r"values\[0\] is int"),
    ([b"k"], [memoryview(b"abcdef")[::2]], TypeError, r"values\[0\] is a memoryview that is not one C-contiguous"),
    ([b"k", b"k"], [b"v"], ValueError, r"differ in length: 2 keys, 1 values"),
    (b"kk", [b"v", b"v"], TypeError, r"keys must be a list of bytes or None, not bytes"),
    ([b"k"], "v", TypeError, r"values must be a list of bytes or None, not str"),
    (None, [b"v"], TypeError, r"keys must be a list of bytes or None, not NoneType"),
    ([b"k"], 5, TypeError, r"values must be a list of bytes or None, not int"),
])
def test_wrong_arguments(keys, values, exc, match):
    with pytest.raises(exc, match=match):
        build_batches(keys, values, TS, 1 << 20)


@pytest.mark.parametrize("timestamp_ms, max_bytes, exc, match", [
    (1.5, 1 << 20, TypeError, "integer"),
    ("1", 1 << 20, TypeError, "integer"),
    (2**63, 1 << 20, OverflowError, "too big"),
    (TS, 67, ValueError, "max_bytes must be from 68"),
    (TS, 2**31, ValueError, "to 2147483647"),
    (TS, -1, ValueError, "max_bytes"),
    (TS, 1.0, TypeError, "integer"),
])
def test_wrong_timestamp_or_max_bytes(timestamp_ms, max_bytes, exc, match):
    with pytest.raises(exc, match=match):
        build_batches([b"k"], [b"v"], timestamp_ms, max_bytes)


def test_a_list_mutated_during_the_build_gives_the_records_as_they_were_read():
    """Allocating the result in C can run the garbage collector, and with it Python code
    that changes the caller's lists between the sizing pass and the writing pass: a gc
    callback here swaps the values for longer or shorter ones at every collection. The
    build holds every item it read (pass 1 allocates no Python object), so the batches
    are those of one state of the lists, whole and well-formed."""
    keys = [b"k"] * 200
    values = [b"v" * 50] * 200
    flips = []

    def flip(phase, info):
        caller = sys._getframe().f_back
        if phase == "start" and caller is not None and caller.f_code.co_name == "build_batches":
            flips.append(phase)
            values[:] = [b"v" * (60 if len(flips) % 2 else 50)] * 200

    # Empty the tuple and list free lists, so that what the C code allocates counts for the gc.
    hold = [(i, i) for i in range(10_000)], [[] for _ in range(10_000)]
    threshold = gc.get_threshold()
    gc.callbacks.append(flip)
    gc.set_threshold(1)  # a collection at (nearly) every allocation of a tracked object
    try:
        batches = build_batches(keys, values, TS, 4096)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(flip)
        del hold
    if not flips:
        pytest.skip("no collection ran inside the C call on this Python")
    got = [r.value for b in batches for r in read_batches(bytes(b._build()), 0, "t", 0, 0)[0]]
    assert len(got) == 200 and len(set(got)) == 1 and got[0] in (b"v" * 50, b"v" * 60)  # one snapshot


# --- CRC-32C: SSE4.2 and portable paths agree with aiokafka's ----------------------------------

def test_crc32c_check_value_and_implementation():
    assert _recordbatch._crc32c(b"123456789") == 0xE3069283
    assert _recordbatch._crc32c(b"123456789", force_portable=True) == 0xE3069283
    assert _recordbatch.CRC_IMPL in ("sse4.2", "portable")


def test_crc32c_paths_agree_on_every_length_and_alignment():
    rng = random.Random(1)
    data = bytes(rng.randrange(256) for _ in range(4200))
    for n in [*range(0, 70), 255, 1000, 4096]:
        for off in range(0, 9):
            chunk = memoryview(data)[off:off + n]
            want = calc_crc32c(bytes(chunk))
            assert _recordbatch._crc32c(chunk) == want
            assert _recordbatch._crc32c(chunk, force_portable=True) == want
    assert _recordbatch._crc32c(data[:300], True) == crc32c_py(data[:300])


def test_crc32c_big_buffer():
    data = os.urandom(3 << 20)
    assert _recordbatch._crc32c(data) == _recordbatch._crc32c(data, True) == calc_crc32c(data)


# --- the builder interface aiokafka's accumulator and sender use ------------------------------

def test_prebuilt_batch_in_a_message_batch():
    [pb] = build_batches([b"k", None], [b"v", None], TS, 1 << 20)
    assert pb.closed() and pb.record_count() == 2 and pb.size() == len(pb._build())
    assert pb.append(timestamp=None, key=b"x", value=b"y", headers=[]) is None
    pb.close()
    assert pb._build() is pb._build()  # the same bytes again on a retry
    assert not hasattr(pb, "__dict__")
    assert repr(pb) == f"PrebuiltBatch(records=2, bytes={pb.size()})"

    async def go():
        mb = MessageBatch(TopicPartition("t", 0), pb, ttl=30, linger_time=1.0)
        assert mb.record_count == 2 and not mb.is_empty()
        assert mb.remaining_linger() is None  # closed: sent at once, no linger
        assert mb.append(b"k", b"v", None) is None
        assert mb.get_data_buffer() is pb._build()
        with pytest.raises(RuntimeError, match="idempotent or transactional"):
            mb.set_producer_state(producer_id=7, producer_epoch=0, base_sequence=0)
    asyncio.run(go())


# --- reading: read_batches (the consumer's side; streams/fetch.py, tests/streams/test_fetch.py) -----

def _read_all(buf, fetch_offset=0, check_crcs=True):
    return read_batches(buf, 0, "t", 2, fetch_offset, check_crcs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=300)), st.one_of(st.none(), st.binary(max_size=3000))),
                min_size=1, max_size=60),
       st.integers(-1, 2 ** 62), st.integers(68, 5000))
def test_read_batches_reads_back_what_build_batches_wrote(records, timestamp_ms, max_bytes):
    keys, values = [k for k, _ in records], [v for _, v in records]
    try:
        batches = build_batches(keys, values, timestamp_ms, max_bytes)
    except RecordTooLarge:
        return
    buf, offset = bytearray(), 0
    for b in batches:  # offsets as the broker gives them
        one = bytearray(b._build())
        one[0:8] = offset.to_bytes(8, "big")
        offset += b.record_count()
        buf += one
    got, next_offset, pos, stop = _read_all(bytes(buf))
    assert (next_offset, pos, stop) == (len(records), len(buf), STOP_END)
    assert [(r.offset, r.key, r.value, r.timestamp, r.timestamp_type, r.headers, r.checksum) for r in got] == \
        [(i, k, v, timestamp_ms, 0, (), None) for i, (k, v) in enumerate(records)]
    assert [(r.serialized_key_size, r.serialized_value_size) for r in got] == \
        [(-1 if k is None else len(k), -1 if v is None else len(v)) for k, v in records]
    assert all((r.topic, r.partition) == ("t", 2) for r in got)


def test_read_batches_log_append_time_headers_and_skipping():
    b = BatchBuilder(1 << 20, 0)
    for i in range(5):
        b.append(timestamp=1000 + i, key=b"k%d" % i, value=b"v", headers=[("a", b"1"), ("\u00e9", None)])
    buf = bytearray(b._build())
    buf[0:8] = (40).to_bytes(8, "big")
    got, next_offset, pos, stop = _read_all(bytes(buf), fetch_offset=42)
    assert [(r.offset, r.timestamp, r.timestamp_type, r.headers) for r in got] == \
        [(o, 1000 + o - 40, 0, (("a", b"1"), ("\u00e9", None))) for o in (42, 43, 44)]
    assert (next_offset, pos, stop) == (45, len(buf), STOP_END)
    # LogAppendTime (attributes bit 3; the CRC covers it): every record has maxTimestamp
    buf[22] |= 0x08
    buf[17:21] = _recordbatch._crc32c(bytes(buf[21:])).to_bytes(4, "big")
    assert {(r.timestamp, r.timestamp_type) for r in _read_all(bytes(buf))[0]} == {(1004, 1)}
    # a record type usable as a ConsumerRecord, a tuple in its field order
    r = _read_all(bytes(buf))[0][0]
    assert type(r) is FetchedRecord
    assert tuple(r) == (r.topic, r.partition, r.offset, r.timestamp, r.timestamp_type, r.key, r.value,
                        r.checksum, r.serialized_key_size, r.serialized_value_size, r.headers)


def test_read_batches_stops_at_what_it_does_not_read():
    b = BatchBuilder(1 << 20, 0)
    b.append(timestamp=1, key=b"k", value=b"v", headers=[])
    one = bytes(b._build())
    g = BatchBuilder(1 << 20, 1)  # gzip
    g.append(timestamp=1, key=b"k", value=b"v", headers=[])
    gz = bytearray(g._build())
    gz[0:8] = (1).to_bytes(8, "big")
    got, next_offset, pos, stop = _read_all(one + bytes(gz) + one)
    assert (len(got), next_offset, pos, stop) == (1, 1, len(one), STOP_FALLBACK)
    bad = bytearray(one)
    bad[-2] ^= 1  # the value's byte
    assert _read_all(bytes(bad))[1:] == (0, 0, STOP_BAD_CRC)
    assert [r.value for r in _read_all(bytes(bad), check_crcs=False)[0]] == [b"w"]
    # a record whose length does not match its fields (CRC fixed): for aiokafka's reader
    bad[-2] ^= 1
    bad[61] += 2
    bad[17:21] = _recordbatch._crc32c(bytes(bad[21:])).to_bytes(4, "big")
    assert _read_all(one + bytes(bad))[1:] == (1, len(one), STOP_FALLBACK)
    for cut in range(len(one)):  # a batch cut off by the fetch size
        assert _read_all(one[:cut]) == ([], 0, 0, STOP_END)


@pytest.mark.parametrize("args, exc, match", [
    ((b"", -1, "t", 0, 0, True), ValueError, "pos -1 is outside the 0-byte buffer"),
    ((b"abc", 4, "t", 0, 0, True), ValueError, "pos 4 is outside"),
    ((b"", 0, b"t", 0, 0, True), TypeError, "str"),
    ((b"", 0, "t", "0", 0, True), TypeError, "int"),
    (("abc", 0, "t", 0, 0, True), TypeError, "bytes-like"),
    ((memoryview(b"abcdef")[::2], 0, "t", 0, 0, True), BufferError, "not C-contiguous"),
])
def test_read_batches_wrong_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        read_batches(*args)


# --- the real broker ---------------------------------------------------------------------------

@pytest.mark.broker
def test_round_trip_through_send_batch(broker, new_topic, topic_io):
    from aiokafka import AIOKafkaProducer

    topic = new_topic("recordbatch", 2)
    rng = random.Random(3)
    n = 4000
    records = {p: ([b"dev-%05d" % i if i % 17 else None for i in range(p, n, 2)],
                   [os.urandom(rng.randrange(0, 600)) if i % 29 else None for i in range(p, n, 2)])
               for p in (0, 1)}
    for keys, _ in records.values():  # a key for every tombstone (None value)
        keys[:] = [k if k is not None else b"tomb" for k in keys]
    for p in (0, 1):
        records[p][0][5] = None  # and one record without a key

    async def produce():
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            futures = []
            for p, (keys, values) in records.items():
                for batch in build_batches(keys, values, TS, 16384):
                    futures.append(await producer.send_batch(batch, topic, partition=p))
            # a plain send() after them to the same partition: the accumulator first
            # offers it to the last queued batch (append -> None), then starts its own
            futures.append(await producer.send(topic, key=b"after", value=b"send", partition=0))
            return await asyncio.gather(*futures)
        finally:
            await producer.stop()

    metadata = asyncio.run(produce())
    assert len(metadata) > 10

    got = topic_io.read_all(topic)
    by_partition = {p: sorted((r for r in got if r.partition == p), key=lambda r: r.offset) for p in (0, 1)}
    for p, (keys, values) in records.items():
        recs = by_partition[p]
        tail = [(r.key, r.value) for r in recs[len(keys):]]
        assert tail == ([(b"after", b"send")] if p == 0 else [])
        recs = recs[:len(keys)]
        assert [r.offset for r in recs] == list(range(len(keys)))
        assert [(r.key, r.value) for r in recs] == list(zip(keys, values))
        assert all(r.timestamp == TS and not r.headers for r in recs)


# --- pack / unpack: fetched records through the pipe to the pipeline's process ----------------

def _fetched_with_headers() -> list:
    batches = []
    for partition, topic in ((0, "telematics.raw"), (2, "telematics.raw"), (1, "other")):
        b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                      producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for i in range(30):
            headers = [("received_at", b"%d" % i), ("transport", b"udp" if i % 3 else b"tcp")][: i % 3]
            if i == 7:
                headers = [("nothing", None), ("é", b"")]
            b.append(i, timestamp=TS + i, key=None if i == 5 else b"35%013d" % i,
                     value=None if i == 9 else b"v" * i, headers=headers)
        batches.append(read_batches(bytes(b.build()), 0, topic, partition, 3)[0])
    return [r for got in batches for r in got]


def test_packed_records_come_back_equal_field_for_field():
    from fleetcloak.streams.recordbatch import pack_records, unpack_records

    records = _fetched_with_headers()
    back = unpack_records(pack_records(records))
    assert back == records and all(type(r) is FetchedRecord for r in back)
    assert back[0].topic is back[1].topic  # one str per run of a topic
    assert unpack_records(pack_records([])) == []


def test_packed_records_read_as_columns_give_the_same_records():
    from fleetcloak.streams.recordbatch import PackedRecords, pack_records

    records = _fetched_with_headers()  # three topic runs, None keys and values, odd headers
    packed = pack_records(records)
    cols = PackedRecords(packed)
    assert len(cols) == len(records)
    assert cols.keys == [r.key for r in records] and cols.values == [r.value for r in records]
    for name in ("transport", "received_at", "nothing", "é", "absent"):
        assert cols.header_values(name) == [dict(reversed(r.headers)).get(name) for r in records]
    transports = [v for v in cols.header_values("transport") if v is not None]
    assert transports and len({id(v) for v in transports}) == len(set(transports))  # one object per value
    # a record is built only when asked for, from its own place in the buffer
    assert [cols[i] for i in (0, 31, 30, -1, 59, 60)] == [records[i] for i in (0, 31, 30, -1, 59, 60)]
    assert cols[2:5] == records[2:5]
    with pytest.raises(IndexError):
        cols[len(records)]
    assert list(cols) == records and cols[7] == records[7]  # iterated: every record, once
    assert len(PackedRecords(pack_records([]))) == 0
    for cut in (1, len(packed) // 2, len(packed) - 1):
        with pytest.raises(ValueError, match="malformed at byte"):
            PackedRecords(packed[:cut])


def test_pack_declines_what_it_would_not_give_back_and_unpack_refuses_a_cut_buffer():
    from fleetcloak.streams.recordbatch import pack_records, unpack_records

    records = _fetched_with_headers()
    assert pack_records(records + [TopicPartition("t", 0)]) is None  # not a FetchedRecord
    odd = list(records[0])
    odd[10] = [("h", b"1")]  # headers as a list, not a tuple
    assert pack_records([FetchedRecord(odd)]) is None
    packed = pack_records(records)
    for cut in (1, 5, len(packed) // 2, len(packed) - 1):
        with pytest.raises(ValueError, match="malformed at byte"):
            unpack_records(packed[:cut])


@pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip"])
def test_compressed_batches_read_back_through_aiokafka(compression):
    keys = [b"dev-%d" % (i % 9) for i in range(3000)]
    values = [b'{"record_id":"%032d","lat":48.1,"lon":11.5}' % i for i in range(3000)]
    plain = build_batches(keys, values, TS, 32 << 10)
    packed = build_batches(keys, values, TS, 32 << 10, None, compression)
    assert [b.record_count() for b in packed] == [b.record_count() for b in plain]  # cut before compressing
    assert sum(b.size() for b in packed) * 3 < sum(b.size() for b in plain)
    got = []
    for b in packed:
        batch = DefaultRecordBatch(bytes(b._build()))
        assert batch.validate_crc() and batch.compression_type == {"gzip": 1, "lz4": 3, "zstd": 4}[compression]
        got += [(r.key, r.value, r.timestamp) for r in batch]
    assert got == [(k, v, TS) for k, v in zip(keys, values)]
    with pytest.raises(ValueError, match="compression must be one of"):
        build_batches(keys, values, TS, 32 << 10, None, "brotli")

"""Whole Kafka RecordBatch v2 buffers for many records in one C call, both ways.

The producer loop used to call aiokafka's `BatchBuilder.append` once per output message;
`build_batches` encodes a partition's messages at once (`_recordbatch.c`) and hands back
`PrebuiltBatch` objects that `AIOKafkaProducer.send_batch` takes in place of the
builder from `producer.create_batch()`. The other way, `read_batches` turns a fetched
partition's batches into `FetchedRecord`s (ConsumerRecord's attributes) in one C call;
streams/fetch.py puts it under the worker's consumer.

The buffers are byte for byte what aiokafka's producer writes for
`append(timestamp=t, key=k, value=v)` with no headers (tested): magic 2, no compression,
partitionLeaderEpoch -1, producerId -1, producerEpoch -1, baseSequence 0 (aiokafka's
BatchBuilder passes 0, not Kafka's NO_SEQUENCE -1), one timestamp for every record.
Batches are filled up to max_bytes inclusive, as aiokafka's pure-Python builder does;
its Cython builder, the one the producer uses, stops at batch_size - 1.

With `compression` ("lz4", "zstd", "gzip"; the worker compresses its outputs with lz4
by default) each batch's records are compressed as Kafka's producers do it and the
header says so: a fifth of the bytes for the broker to take in, store and serve (on the
embedded broker, its CPU follows the bytes), for ~0.4 s of CPU per 260 MB here.

Limits, by design: no headers, and no idempotent or transactional producer (those need
producer id and sequence written into the batch when the sender drains it:
`_set_producer_state` raises).
"""
from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence

import cramjam
import numpy as np

from . import _recordbatch

BATCH_OVERHEAD = _recordbatch.BATCH_OVERHEAD  # RecordBatch header bytes before the first record


class RecordTooLarge(ValueError):
    """One record does not fit a batch of max_bytes even on its own."""

    def __init__(self, index: int, size: int, max_bytes: int) -> None:
        super().__init__(f"record {index} needs a {size}-byte batch of its own "
                         f"({BATCH_OVERHEAD}-byte header included), more than max_bytes={max_bytes}")
        self.index = index
        self.size = size
        self.max_bytes = max_bytes

    def __reduce__(self):
        return type(self), (self.index, self.size, self.max_bytes)


_recordbatch.set_too_large_error(RecordTooLarge)


class PrebuiltBatch:
    """A finished batch, in the shape of aiokafka's `BatchBuilder` as its producer uses it.

    MessageAccumulator and the sender call: `append` (by `producer.send()` when this
    batch is the last one queued for its partition: None sends it to a new batch),
    `close`, `closed`, `record_count`, `_build` (the bytes sent, again on a retry),
    `_set_producer_state` (only with idempotence or transactions). `size` is the
    builder's public size.
    """

    __slots__ = ("_buffer", "_count")

    def __init__(self, buffer: bytearray, record_count: int) -> None:
        self._buffer = buffer
        self._count = record_count

    def __reduce_ex__(self, protocol):
        # Protocol 5: the buffer may travel out of band (streams/runner.py writes it to the
        # pipe from here and the parent reads it into place), and comes back as a view.
        buffer = pickle.PickleBuffer(self._buffer) if protocol >= 5 else self._buffer
        return PrebuiltBatch, (buffer, self._count)

    def append(self, *, timestamp, key, value, headers=None) -> None:
        return None  # full: the accumulator starts a new batch for the message

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def _build(self) -> bytearray:
        return self._buffer

    def size(self) -> int:
        return len(self._buffer)

    def record_count(self) -> int:
        return self._count

    def _set_producer_state(self, producer_id, producer_epoch, base_sequence):
        raise RuntimeError("a PrebuiltBatch cannot be sent by an idempotent or transactional producer "
                           "(enable_idempotence=True or transactional_id set): its producer id and "
                           "sequence are fixed at -1/-1/0")

    def __repr__(self) -> str:
        return f"PrebuiltBatch(records={self._count}, bytes={len(self._buffer)})"


def build_batches(keys: Sequence[bytes | None], values: Sequence[bytes | None],
                  timestamp_ms: int, max_bytes: int, rows: np.ndarray | None = None,
                  compression: str = "none") -> list[PrebuiltBatch]:
    """The records in order, cut into as few batches of at most max_bytes as possible.

    keys[i], values[i]: bytes, any bytes-like object, or None. rows: None for every record,
    or an int64 array of indexes into keys/values, the records to take in that order (a
    partition's share, without building lists of its own). Every record gets timestamp_ms
    (CreateTime). A record too large for a batch of its own raises RecordTooLarge (a
    ValueError) with its index in keys and the size it needs. `compression` (one of
    COMPRESSIONS): each batch's records compressed as Kafka's codec does it; max_bytes
    then bounds the batch before compression.
    """
    if rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
    batches = [PrebuiltBatch(buf, count) for buf, count in _recordbatch.build(keys, values, timestamp_ms, max_bytes, rows)]
    return batches if compression == "none" else compress_batches(batches, compression)


def compress_batches(batches: list[PrebuiltBatch], compression: str) -> list[PrebuiltBatch]:
    """Uncompressed batches (from build_batches) with their records compressed."""
    if compression == "none":
        return batches
    codec, compress = _codec(compression)
    return [PrebuiltBatch(compressed_batch(b._buffer, codec, compress), b._count) for b in batches]


# Kafka's codec ids (the attributes' low 3 bits) and how each compresses a batch's records:
# LZ4 as a frame of independent blocks without a content checksum (KIP-57: what brokers
# and every client read), zstd at level 1 (the fastest; ~9x on the telemetry JSON).
COMPRESSIONS = ("none", "lz4", "zstd", "gzip")


def _lz4(data) -> bytes:
    compressor = cramjam.lz4.Compressor(level=1, content_checksum=False, block_linked=False)
    compressor.compress(bytes(data))  # it takes bytes only (a copy: ~3 % of the compression)
    return compressor.finish()


def _codec(name: str):
    if name == "lz4":
        return 3, _lz4
    if name == "zstd":
        return 4, lambda data: cramjam.zstd.compress(data, level=1)
    if name == "gzip":
        return 1, lambda data: cramjam.gzip.compress(data, level=1)
    raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {name!r}")


_LENGTH_AT, _CRC_AT, _ATTRIBUTES_AT = 8, 17, 21


def compressed_batch(batch: bytearray, codec: int, compress) -> bytearray:
    """An uncompressed batch from `_recordbatch.build` with its records compressed: the
    same header with the codec in its attributes, its length and CRC-32C written anew.
    (cramjam releases the GIL while it compresses.)"""
    body = compress(memoryview(batch)[BATCH_OVERHEAD:])
    out = bytearray(BATCH_OVERHEAD + len(body))
    out[:BATCH_OVERHEAD] = memoryview(batch)[:BATCH_OVERHEAD]
    out[BATCH_OVERHEAD:] = body
    struct.pack_into(">i", out, _LENGTH_AT, len(out) - 12)
    struct.pack_into(">h", out, _ATTRIBUTES_AT, codec)
    struct.pack_into(">I", out, _CRC_AT, _recordbatch._crc32c(memoryview(out)[_ATTRIBUTES_AT:]))
    return out


def pack_records(records) -> bytes | None:
    """FetchedRecords as one buffer, for `unpack_records` on the other end of a pipe (same
    machine: native byte order); None if any record is not a FetchedRecord with fields
    of the types read_batches gives (the caller sends those another way)."""
    return _recordbatch.pack(records)


def unpack_records(data) -> list:
    """The FetchedRecords `pack_records` packed (ValueError if `data` is cut or malformed)."""
    return _recordbatch.unpack(data)


class PackedRecords(Sequence):
    """The FetchedRecords `pack_records` packed, read as columns in one C pass: `keys` and
    `values` (lists of bytes or None), `header_values(name)`; a record object is built
    only when one is asked for (`batch[i]`, a dead letter's source), or all of them when
    the batch is iterated. The pipeline's child reads its batches so
    (streams/runner.py): 8,000 records as objects, then a Python pass over them, cost
    ~16 ms of the child's ~300 ms a batch. ValueError if `data` is cut or malformed.
    Keeps `data` (any bytes-like object) until it is dropped."""

    __slots__ = ("_data", "keys", "values", "_topics", "_starts", "_all")

    def __init__(self, data) -> None:
        self._data = data
        self.keys, self.values, self._topics, starts = _recordbatch.columns(data)
        self._starts = np.frombuffer(starts, dtype=np.int64)
        self._all: list | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if self._all is not None:
            return self._all[i]
        i = range(len(self))[i]  # IndexError as a list's; negative indexes
        return _recordbatch.unpack(self._data, int(self._starts[i]), 1, self._topics[i])[0]

    def __iter__(self):
        if self._all is None:
            self._all = _recordbatch.unpack(self._data)
        return iter(self._all)

    def header_values(self, name: str) -> list:
        """Each record's first header called `name`: its value (bytes or None), None
        where it has none. Equal values are one bytes object."""
        return _recordbatch.header_values(self._data, name)


def message_columns(messages: Sequence, header: str) -> tuple[list, list, list]:
    """(keys, values, each message's first header called `header`: its value, or None) of
    a batch of messages: read from the buffer of PackedRecords, attribute by attribute
    from any other sequence of messages (key, value, headers: pairs of name and value)."""
    if isinstance(messages, PackedRecords):
        return messages.keys, messages.values, messages.header_values(header)
    return ([m.key for m in messages], [m.value for m in messages],
            [next((v for k, v in m.headers or () if k == header), None) for m in messages])


FetchedRecord = _recordbatch.FetchedRecord  # topic, partition, offset, timestamp, timestamp_type,
#   key, value, checksum (None), serialized_key_size, serialized_value_size, headers (tuple of (str, bytes | None))
STOP_END = _recordbatch.STOP_END            # no complete batch left at pos
STOP_FALLBACK = _recordbatch.STOP_FALLBACK  # the batch at pos is for aiokafka's reader
STOP_BAD_CRC = _recordbatch.STOP_BAD_CRC    # the batch at pos fails its CRC-32C


def read_batches(data, pos: int, topic: str, partition: int, next_offset: int,
                 check_crcs: bool = True) -> tuple[list[FetchedRecord], int, int, int]:
    """The records of the uncompressed, non-control, non-transactional v2 batches in `data`
    (a fetched partition's bytes, any bytes-like object) from byte `pos` on.

    Returns (records, next_offset, pos, stop), with aiokafka's PartitionRecords rules for
    next_offset: records below it are skipped, and after each batch it is the batch's last
    offset + 1. Reading stops at the first batch it does not read, pos then being that
    batch's start: STOP_END (no complete batch left), STOP_FALLBACK (magic != 2,
    compressed, transactional, control, or malformed in any way: for aiokafka's reader),
    STOP_BAD_CRC (check_crcs and a CRC mismatch). A batch is read whole or not at all.
    """
    return _recordbatch.read(data, pos, topic, partition, next_offset, check_crcs)

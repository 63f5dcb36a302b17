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

Limits, by design: no headers, no compression, and no idempotent or transactional
producer (those need producer id and sequence written into the batch when the sender
drains it: `_set_producer_state` raises).
"""
from __future__ import annotations

from collections.abc import Sequence

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
                  timestamp_ms: int, max_bytes: int, rows: np.ndarray | None = None) -> list[PrebuiltBatch]:
    """The records in order, cut into as few batches of at most max_bytes as possible.

    keys[i], values[i]: bytes, any bytes-like object, or None. rows: None for every record,
    or an int64 array of indexes into keys/values, the records to take in that order (a
    partition's share, without building lists of its own). Every record gets timestamp_ms
    (CreateTime). A record too large for a batch of its own raises RecordTooLarge (a
    ValueError) with its index in keys and the size it needs.
    """
    if rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
    return [PrebuiltBatch(buf, count)
            for buf, count in _recordbatch.build(keys, values, timestamp_ms, max_bytes, rows)]


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

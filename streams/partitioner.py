"""Which partition each output message goes to, and its record batches.

    partitioner = Partitioner()
    for topic, keys, values in join_by_topic(result.blocks):
        for partition, batches in encode_block(partitioner, topic, keys, values, parts, now_ms, max_bytes):
            ...  # hand `batches` (PrebuiltBatch) to the producer for (topic, partition)

The delivery loop does this for the outputs of a pipeline run in its own thread; the
pipeline's child process (streams/runner.py) does it before replying, so what crosses
the pipe is a few record-batch buffers per partition (`EncodedBlock`), not hundreds of
thousands of small values to pickle and unpickle. Both use the code below, with the
partition lists the loop read from the producer's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from aiokafka.partitioner import murmur2

from .recordbatch import PrebuiltBatch, RecordTooLarge, build_batches
from .seam import OutputBlock

_CACHE_LIMIT = 200_000


class Partitioner:
    """Kafka's default partitioner: murmur2 of the key, so keys land where Java producers
    put them (keyed order holds); round robin for messages without a key. Cached per
    (topic, key) because murmur2 is pure Python in aiokafka and keys repeat (devices)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bytes], int] = {}
        self._rr = 0

    def partition_for(self, topic: str, key: bytes | None, parts: list[int]) -> int:
        if key is None:
            self._rr += 1
            return parts[self._rr % len(parts)]
        cache_key = (topic, key)
        p = self._cache.get(cache_key)
        if p is None:
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
            p = self._cache[cache_key] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    def groups(self, topic: str, keys: list, parts: list[int]) -> dict[int, np.ndarray | None]:
        """partition -> the indexes of its messages in `keys`, in order (None: all of them)."""
        distinct_keys = dict.fromkeys(keys)
        of_key = {k: self.partition_for(topic, k, parts) for k in distinct_keys if k is not None}
        if None in distinct_keys:  # no key: round robin, message by message
            part_of = [of_key[k] if k is not None else self.partition_for(topic, None, parts) for k in keys]
            codes = np.fromiter(part_of, dtype=np.int64, count=len(part_of))
            used = set(part_of)
        else:  # one pass over the keys, in C (this runs beside the pipeline: it holds the GIL)
            used = set(of_key.values())
            codes = None if len(used) == 1 else np.fromiter(map(of_key.__getitem__, keys), dtype=np.int64,
                                                             count=len(keys))
        if len(used) == 1:
            return {used.pop(): None}
        return {p: np.flatnonzero(codes == p) for p in sorted(used)}


def join_by_topic(blocks: list[OutputBlock]):
    """(topic, keys, values) per topic, blocks of one topic joined in order: one set of
    record batches per partition, not one per block (each batch of a partition is one
    more round trip to the broker)."""
    joined: dict[str, list[OutputBlock]] = {}
    for block in blocks:
        if len(block):
            joined.setdefault(block.topic, []).append(block)
    for topic, parts in joined.items():
        if len(parts) == 1:
            yield topic, parts[0].keys, parts[0].values
        else:
            yield (topic, [k for b in parts for k in b.keys], [v for b in parts for v in b.values])


def encode_block(partitioner: Partitioner, topic: str, keys: list, values: list, parts: list[int],
                 timestamp_ms: int, max_bytes: int, compression: str = "none") -> list[tuple[int, list[PrebuiltBatch]]]:
    """A topic's messages grouped by partition (order kept within each), each group as
    Kafka record batches of at most max_bytes (before compression) built in one C call.
    RecordTooLarge if a message does not fit a batch on its own."""
    return [(p, build_batches(keys, values, timestamp_ms, max_bytes, rows, compression))
            for p, rows in partitioner.groups(topic, keys, parts).items()]


@dataclass
class EncodedBlock:
    """A topic's output messages already cut by partition into record batches: what the
    pipeline's child process sends back in place of an OutputBlock."""

    topic: str
    parts: list          # [(partition, [PrebuiltBatch, ...]), ...]
    count: int           # messages in all

    def __len__(self) -> int:
        return self.count


def encode_blocks(blocks: list[OutputBlock], partitioner: Partitioner, partitions: dict[str, list[int]],
                  timestamp_ms: int, max_bytes: int, compression: str = "none") -> list:
    """`blocks` with each topic's blocks joined and encoded (EncodedBlock) when its
    partitions are known; the others, and a topic with a message too large for a batch,
    stay OutputBlocks for the loop (which then fails the delivery, naming the topic)."""
    out: list = []
    for topic, keys, values in join_by_topic(blocks):
        parts = partitions.get(topic)
        if parts:
            try:
                out.append(EncodedBlock(topic, encode_block(partitioner, topic, keys, values, parts,
                                                            timestamp_ms, max_bytes, compression), len(keys)))
                continue
            except RecordTooLarge:
                pass
        out.append(OutputBlock(topic, keys, values))
    return out

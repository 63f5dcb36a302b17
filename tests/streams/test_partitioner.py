"""Which partition each output goes to, and the encoded blocks the pipeline's process
sends back (streams/partitioner.py), without a broker."""
import random

import numpy as np
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatch

from fleetcloak.streams.partitioner import EncodedBlock, Partitioner, encode_blocks, join_by_topic
from fleetcloak.streams.recordbatch import BATCH_OVERHEAD
from fleetcloak.streams.seam import OutputBlock

TS = 1_700_000_000_000


def _records(batches) -> list[tuple]:
    out = []
    for b in batches:
        batch = DefaultRecordBatch(bytes(b._build()))
        assert batch.validate_crc()
        out += [(r.key, r.value, r.timestamp) for r in batch]
    return out


def test_partitioner_matches_kafkas_default():
    partitioner = Partitioner()
    parts = [0, 1, 2, 3, 4, 5]
    rng = random.Random(7)
    for _ in range(500):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        assert partitioner.partition_for("t", key, parts) == DefaultPartitioner()(key, parts, parts)
        assert partitioner.partition_for("t", key, parts) == DefaultPartitioner()(key, parts, parts)  # cached


def test_groups_keep_order_and_spread_keyless_messages_round_robin():
    partitioner = Partitioner()
    keys = [b"a", b"b", None, b"a", None, b"c", b"b", None]
    groups = partitioner.groups("t", keys, [0, 1, 2])
    rows = np.concatenate([np.arange(len(keys)) if r is None else r for r in groups.values()])
    assert sorted(rows.tolist()) == list(range(len(keys)))  # each message once
    for p, r in groups.items():
        assert list(r) == sorted(r)  # in order within a partition
        for i in r:
            if keys[i] is not None:
                assert partitioner.partition_for("t", keys[i], [0, 1, 2]) == p
    assert len({p for p, r in groups.items() for i in r if keys[i] is None}) > 1
    assert partitioner.groups("t", [b"a"] * 4, [0, 1, 2]) == {partitioner.partition_for("t", b"a", [0, 1, 2]): None}


def test_blocks_of_one_topic_are_joined_in_order():
    a1, b1, a2 = OutputBlock("a", [b"1"], [b"x"]), OutputBlock("b", [b"2"], [b"y"]), OutputBlock("a", [None], [b"z"])
    got = list(join_by_topic([a1, OutputBlock("c", [], []), b1, a2]))
    assert got == [("a", [b"1", None], [b"x", b"z"]), ("b", [b"2"], [b"y"])]
    assert next(join_by_topic([a1]))[1] is a1.keys  # one block: its lists, not copies


def test_encoded_blocks_hold_every_message_in_partition_order_compressed_or_not():
    rng = random.Random(3)
    keys = [b"dev-%d" % rng.randrange(40) for _ in range(3000)]
    values = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * rng.randrange(200)) for i in range(3000)]
    blocks = [OutputBlock("tenant.a", keys[:2000], values[:2000]), OutputBlock("other", [b"k"], [b"v"]),
              OutputBlock("tenant.a", keys[2000:], values[2000:])]
    parts = [0, 1, 2, 3]
    for compression in ("none", "lz4", "zstd"):
        out = encode_blocks(blocks, Partitioner(), {"tenant.a": parts}, TS, 64 << 10, compression)
        assert isinstance(out[0], EncodedBlock) and out[0].topic == "tenant.a" and len(out[0]) == 3000
        assert out[1] == OutputBlock("other", [b"k"], [b"v"])  # partitions unknown: left for the loop
        seen = []
        for p, batches in out[0].parts:
            assert len(batches) > 1 or compression != "none"
            got = _records(batches)
            assert all(Partitioner().partition_for("tenant.a", k, parts) == p for k, _, _ in got)
            seen += got
        want = [(k, v, TS) for k, v in zip(keys, values)]
        assert sorted(seen) == sorted(want)
        for p, _ in out[0].parts:  # order within each partition is the blocks' order
            mine = [(k, v, TS) for k, v in zip(keys, values) if Partitioner().partition_for("tenant.a", k, parts) == p]
            assert _records(dict(out[0].parts)[p]) == mine


def test_a_message_too_large_for_a_batch_leaves_its_topic_to_the_loop():
    big = OutputBlock("t", [b"k"], [b"v" * 5000])
    out = encode_blocks([big], Partitioner(), {"t": [0]}, TS, BATCH_OVERHEAD + 100)
    assert out == [big]

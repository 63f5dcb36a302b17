"""Synchronous topic IO for tests, benches, the demo and CLIs: create, produce, read to
the end, committed offsets. Each call runs its own event loop (asyncio.run), so do not
call these from inside a running loop; use the async variants there.

"To the end" means the fetch high-watermark (see streams/control.py): `end_offsets()`
is wrong on Tansu.
"""
from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Iterable, Sequence

_counter = itertools.count()


def unique_name(prefix: str = "t") -> str:
    """A topic or group name nobody else in this broker uses."""
    return f"{prefix}.{uuid.uuid4().hex[:8]}.{next(_counter)}"


# --- async ---------------------------------------------------------------------------------

async def acreate_topic(bootstrap: str, name: str, partitions: int = 1, configs: dict | None = None):
    from aiokafka.admin import AIOKafkaAdminClient

    from fleetcloak.streams.topics import TopicSpec, ensure_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await ensure_topics(admin, [TopicSpec(name, partitions, dict(configs or {}))])
    finally:
        await admin.close()


async def aproduce(bootstrap: str, topic: str, items: Iterable[tuple], *, partition: int | None = None) -> int:
    """Produce (key, value[, headers]) items, awaiting every delivery. Returns the count."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                linger_ms=5, max_batch_size=1 << 20, max_request_size=(1 << 20) + (64 << 10))
    await producer.start()
    try:
        futures = []
        for item in items:
            key, value = item[0], item[1]
            headers = list(item[2]) if len(item) > 2 and item[2] else None
            futures.append(await producer.send(topic, value=value, key=key, headers=headers, partition=partition))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def ahighwaters(consumer, partitions: Sequence, timeout: float = 10.0) -> dict:
    """tp -> high-watermark from a fetch issued now (the consumer must have them assigned)."""
    deadline = time.monotonic() + timeout
    while True:
        hws = {tp: consumer.highwater(tp) for tp in partitions}
        if all(v is not None for v in hws.values()):
            return hws
        if time.monotonic() > deadline:
            raise TimeoutError(f"no fetch response for {[tp for tp, v in hws.items() if v is None]}")
        await consumer.getmany(*partitions, timeout_ms=50)


async def aread_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every record of every partition of `topic`, up to the high-watermark seen now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await consumer.start()
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout
        target: dict | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                out.extend(records)
            if target is None and all(consumer.highwater(tp) is not None for tp in tps):
                target = {tp: consumer.highwater(tp) for tp in tps}
            if target is not None and all([await consumer.position(tp) >= target[tp] for tp in tps]):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to the end took more than {timeout}s")
    finally:
        await consumer.stop()


async def atrue_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> high-watermark (what end_offsets() should answer)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, auto_offset_reset="latest")
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return {tp.partition: hw for tp, hw in (await ahighwaters(consumer, tps)).items()}
    finally:
        await consumer.stop()


async def acommitted(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """partition -> committed offset of `group` on `topic` (absent when none).

    Asks through a consumer of the group that never joins it (OffsetFetch v1+): the admin
    client's list_consumer_group_offsets gets a response from Tansu 0.6 that aiokafka
    cannot decode (measured), so it is not used.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        out = {}
        for p in sorted(consumer.partitions_for_topic(topic) or ()):
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None and offset >= 0:
                out[p] = offset
        return out
    finally:
        await consumer.stop()


# --- sync wrappers -------------------------------------------------------------------------

def create_topic(bootstrap: str, name: str, partitions: int = 1, configs: dict | None = None):
    return asyncio.run(acreate_topic(bootstrap, name, partitions, configs))


def produce(bootstrap: str, topic: str, items: Iterable[tuple], *, partition: int | None = None) -> int:
    return asyncio.run(aproduce(bootstrap, topic, items, partition=partition))


def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    return asyncio.run(aread_all(bootstrap, topic, timeout))


def true_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    return asyncio.run(atrue_end_offsets(bootstrap, topic))


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    return asyncio.run(acommitted(bootstrap, group, topic))

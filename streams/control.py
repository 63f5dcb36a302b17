"""Control-plane tables: compacted topics read whole, then followed live.

Every worker reads `fleetcloak.policies`, `fleetcloak.keys` and `fleetcloak.subjects`
from the beginning with a consumer of its own (manual assignment, no consumer group, no
committed offsets: the state is rebuilt at every start), and keeps the latest value
per key. A tombstone (null value) deletes the key.

"Read to the end" uses the fetch response's high-watermark, not ListOffsets:
`end_offsets()` is wrong on Tansu (it answers the base offset of the last batch + 1,
so a catch-up that trusts it stops early and silently misses the tail; measured in
tests/streams/test_control.py). The high-watermark comes with every Fetch response,
is right on Tansu and on Kafka, and a position at or past a high-watermark obtained
after the catch-up began proves that everything written before it has been applied.

Why not Faust tables: their recovery reads changelogs "to the end" with ListOffsets
(wrong on Tansu), they are per-partition and owned by one worker of the group, while
each worker needs the whole control plane.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

ChangeCallback = Callable[["CompactedTable", bytes, "bytes | None"], None]


class CompactedTable:
    """key bytes -> latest value bytes of one compacted topic; tombstones delete."""

    def __init__(self, topic: str, on_change: ChangeCallback | None = None) -> None:
        self.topic = topic
        self._data: dict[bytes, bytes] = {}
        self._callbacks: list[ChangeCallback] = [on_change] if on_change else []
        self.applied = 0  # records applied, tombstones included

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one record; return whether the table changed. Keyless records are ignored."""
        self.applied += 1
        if key is None:
            log.warning("ignoring a keyless record on compacted topic %s", self.topic)
            return False
        if value is None:
            if self._data.pop(key, None) is None:
                return False
        elif self._data.get(key) == value:
            return False
        else:
            self._data[key] = value
        for callback in self._callbacks:
            callback(self, key, value)
        return True

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def snapshot(self) -> dict[bytes, bytes]:
        """A copy: the caller may keep it while the table moves on."""
        return dict(self._data)


class TableReader:
    """Reads compacted topics into CompactedTables: `start()` catches up, then follows.

    One aiokafka consumer for all the tables, every partition assigned by hand.
    """

    def __init__(self, bootstrap: str, tables: Iterable[CompactedTable], *,
                 client_id: str = "fleetcloak-control", fetch_max_wait_ms: int = 100) -> None:
        self.bootstrap = bootstrap
        self.tables: dict[str, CompactedTable] = {t.topic: t for t in tables}
        self.client_id = client_id
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer = None
        self._partitions: list = []
        self._follow_task: asyncio.Task | None = None
        self.caught_up_at: float | None = None
        self.error: BaseException | None = None

    async def start(self, catchup_timeout: float = 30.0, follow: bool = True) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        await self._consumer.start()
        try:
            await self._consumer.topics()  # refresh metadata
            for topic in self.tables:
                parts = self._consumer.partitions_for_topic(topic)
                if not parts:
                    raise LookupError(f"control topic {topic} does not exist (create it: fleetcloak topics create)")
                self._partitions += [TopicPartition(topic, p) for p in sorted(parts)]
            self._consumer.assign(self._partitions)
            await self._consumer.seek_to_beginning(*self._partitions)
            await asyncio.wait_for(self._catch_up(), catchup_timeout)
        except BaseException:
            await self.stop()
            raise
        if follow:
            self._follow_task = asyncio.create_task(self._follow(), name="control-follow")

    async def _apply(self, timeout_ms: int) -> int:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        n = 0
        for tp, records in batch.items():
            table = self.tables[tp.topic]
            for record in records:
                table.apply(record.key, record.value)
            n += len(records)
        return n

    async def lagging(self) -> list:
        """Partitions whose position is behind the last fetch's high-watermark (or unknown)."""
        behind = []
        for tp in self._partitions:
            hw = self._consumer.highwater(tp)
            if hw is None or await self._consumer.position(tp) < hw:
                behind.append(tp)
        return behind

    async def _catch_up(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            n += await self._apply(timeout_ms=50)
            if not await self.lagging():
                break
        self.caught_up_at = time.monotonic()
        log.info("control plane caught up: %d records from %d partitions in %.2fs (%s)", n, len(self._partitions),
                 self.caught_up_at - t0, ", ".join(f"{t.topic}={len(t)} keys" for t in self.tables.values()))

    async def _follow(self) -> None:
        try:
            while True:
                await self._apply(timeout_ms=1000)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by the owner (the worker stops on it)
            self.error = exc
            log.error("control-plane reader failed: %r", exc)
            raise

    @property
    def follow_task(self) -> asyncio.Task | None:
        return self._follow_task

    async def stop(self) -> None:
        task, self._follow_task = self._follow_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


async def read_tables(bootstrap: str, topics: Iterable[str], timeout: float = 30.0) -> dict[str, dict[bytes, bytes]]:
    """One-shot: read compacted topics to the end and return their state (for CLIs)."""
    tables = [CompactedTable(t) for t in topics]
    reader = TableReader(bootstrap, tables)
    await reader.start(catchup_timeout=timeout, follow=False)
    await reader.stop()
    return {t.topic: t.snapshot() for t in tables}


# --- writing -----------------------------------------------------------------------------

async def publish(producer, topic: str, items: Mapping[bytes, "bytes | None"] | Iterable[tuple[bytes, "bytes | None"]],
                  headers: list[tuple[str, bytes]] | None = None) -> list:
    """Publish key -> value (None = tombstone) records and wait until the broker has them all.

    Returns the RecordMetadata of each, in order. Raises if any send failed.
    """
    pairs = items.items() if isinstance(items, Mapping) else items
    futures = []
    for key, value in pairs:
        if not isinstance(key, bytes) or not key:
            raise ValueError("a control record needs a non-empty bytes key")
        futures.append(await producer.send(topic, key=key, value=value, headers=headers))
    return list(await asyncio.gather(*futures))


async def tombstone(producer, topic: str, key: bytes) -> object:
    return (await publish(producer, topic, [(key, None)]))[0]


def control_producer(bootstrap: str, client_id: str = "fleetcloak-control"):
    """A producer fit for control records: acks=all (aiokafka keeps one batch in flight per
    partition, so records arrive in the order they were sent)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                            enable_idempotence=False, linger_ms=0)


async def publish_to(bootstrap: str, topic: str, items, headers=None) -> list:
    """Start a producer, publish, stop: for CLI commands (`policy apply`, `subject erase`...)."""
    producer = control_producer(bootstrap)
    await producer.start()
    try:
        return await publish(producer, topic, items, headers)
    finally:
        await producer.stop()


class ControlPlane:
    """The three control tables of a worker, read by one TableReader.

    `snapshot()` gives the pipeline factory an immutable view; `subscribe(fn)` calls
    fn(role) after any change (the delivery loop uses it to refresh or rebuild its
    pipeline between batches).
    """

    def __init__(self, bootstrap: str, *, policies_topic: str = "fleetcloak.policies",
                 keys_topic: str = "fleetcloak.keys", subjects_topic: str = "fleetcloak.subjects") -> None:
        self.policies = CompactedTable(policies_topic, self._changed)
        self.keys = CompactedTable(keys_topic, self._changed)
        self.subjects = CompactedTable(subjects_topic, self._changed)
        self._roles = {policies_topic: "policies", keys_topic: "keys", subjects_topic: "subjects"}
        self.reader = TableReader(bootstrap, [self.policies, self.keys, self.subjects])
        self.version = 0
        self._listeners: list[Callable[[str], None]] = []

    def _changed(self, table: CompactedTable, key: bytes, value: bytes | None) -> None:
        self.version += 1
        role = self._roles[table.topic]
        # The key is never logged (subject keys name people). Key entries change each time
        # a worker mints a subject salt: debug level, not info.
        log.log(logging.DEBUG if role == "keys" else logging.INFO, "control change on %s (%s), version %d",
                table.topic, "tombstone" if value is None else "update", self.version)
        for listener in self._listeners:
            listener(role)

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """listener(role) after each change; role is "policies", "keys" or "subjects"."""
        self._listeners.append(listener)

    def snapshot(self):
        from fleetcloak.streams.seam import ControlSnapshot

        return ControlSnapshot(self.policies.snapshot(), self.keys.snapshot(), self.subjects.snapshot(), self.version)

    def failed(self) -> BaseException | None:
        """The reader's error once its follow task has died, else None."""
        task = self.reader.follow_task
        if task is not None and task.done() and not task.cancelled():
            return task.exception() or RuntimeError("control-plane reader stopped")
        return self.reader.error

    async def start(self, catchup_timeout: float = 30.0) -> None:
        await self.reader.start(catchup_timeout)

    async def stop(self) -> None:
        await self.reader.stop()

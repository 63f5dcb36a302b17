"""The audit trail: hash-chained events in the single-partition `fleetcloak.audit` topic.

Every policy change, key rotation or destruction, rights request, retention action and
offboarding appends one event. An event says who (operator), when (UTC ms), what
(action), on whom (a pseudonymised subject key, never a raw IMEI or driver id), the
outcome and details. Events are chained:

    hash = SHA-256( canonical JSON of the event without "hash" )     # includes prev_hash
    canonical JSON = sorted keys, no whitespace, UTF-8

`prev_hash` is the hash of the event the writer saw as the head of the log (the genesis
value is 64 zeros), `seq` is one more than the highest seq it builds on. Altering an
event breaks its hash; removing one leaves its successor pointing at a hash that is not
in the log; reordering makes an event point at one that comes later. A chain without a
secret cannot stop someone who can rewrite the whole topic from forging a new one:
`audit verify` prints the head hash so it can be anchored elsewhere (a ticket, a signed
note), and truncation of the tail is detectable only against such an anchor.

Concurrent writers (two CLI runs, several workers). Kafka has no compare-and-set, so two
writers that read the same head both append an event on it: a fork. Forks are not
tampering and are not hidden: the next writer reads the tail of the log and commits to
*every* tip it finds (`prev_hash` = the last event in log order, `merged` = the other
unreferenced events), so a forked sibling is covered by a later hash like any other
event, and removing it is detected. `verify` reports forks (count and seqs) beside the
verdict; only an unmerged tip at the very head can be removed undetected, exactly like
the last event of a linear chain. One partition keeps the order total, which is what
makes "the head" meaningful; the writer refuses a topic with more partitions.

The pure core (`canonical`, `event_hash`, `chain_append`, `tips`, `verify`) needs no
broker; `AuditLog` is the Kafka side. The small "read a partition to the fetch
high-watermark" helpers here are also used by the rights and retention modules (on
Tansu ListOffsets(latest) is wrong, CONVENTIONS.md section 7).
"""
from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

AUDIT_TOPIC = "fleetcloak.audit"
GENESIS = "0" * 64
SCHEMA_VERSION = 1
# A writer commits to every unreferenced event among the last TAIL events it read.
TAIL = 256
OUTCOMES = ("ok", "failed", "partial", "refused")

# Defence in depth: an audit event must never carry a raw IMEI (15 digits).
_RAW_IMEI = re.compile(r"(?<![0-9A-Za-z])[0-9]{15}(?![0-9A-Za-z])")


class AuditError(RuntimeError):
    pass


# --------------------------------------------------------------------------- identity

def resolve_operator(cli_value: str | None = None) -> tuple[str, str]:
    """(operator, source): `--operator`, else $FLEETCLOAK_OPERATOR, else the OS user.

    The source is recorded in every event so a reader knows how much to trust the name:
    "cli" and "env" are what the operator claimed; "os-user" is the local account.
    """
    if cli_value:
        return cli_value, "cli"
    env = os.environ.get("FLEETCLOAK_OPERATOR")
    if env:
        return env, "env"
    try:
        return getpass.getuser(), "os-user"
    except Exception:  # no passwd entry (containers)
        return f"uid:{os.getuid()}", "os-user"


# --------------------------------------------------------------------------- pure core

def canonical(event: dict) -> bytes:
    """Canonical JSON of an event without its "hash": sorted keys, no whitespace."""
    body = {k: v for k, v in event.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def event_hash(event: dict) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def _check_no_raw_ids(event: dict) -> None:
    text = canonical(event).decode("utf-8")
    if _RAW_IMEI.search(text):
        raise AuditError("refusing to write an audit event that contains what looks like a raw IMEI")


def make_event(action: str, *, operator: str, operator_source: str, tenant: str | None = None,
               subject: str | None = None, outcome: str = "ok", details: dict | None = None,
               ts_ms: int | None = None, writer: str | None = None) -> dict:
    """An unchained event body (chain_append adds seq, prev_hash, merged, hash)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
    return {
        "v": SCHEMA_VERSION,
        "ts_ms": int(time.time() * 1000) if ts_ms is None else int(ts_ms),
        "operator": operator,
        "operator_source": operator_source,
        "action": action,
        "tenant": tenant,
        "subject": subject,
        "outcome": outcome,
        "details": dict(details or {}),
        "writer": writer,
    }


def chain_append(prev: dict | None, event: dict, merged: Sequence[dict] = ()) -> dict:
    """Chain `event` onto `prev` (None: genesis), also committing to `merged` tips."""
    parents = ([prev] if prev is not None else []) + list(merged)
    out = {k: v for k, v in event.items() if k not in ("seq", "prev_hash", "merged", "hash")}
    out["prev_hash"] = prev["hash"] if prev is not None else GENESIS
    out["merged"] = sorted(m["hash"] for m in merged)
    out["seq"] = max((p["seq"] for p in parents), default=-1) + 1
    _check_no_raw_ids(out)
    out["hash"] = event_hash(out)
    return out


def tips(events: Iterable[dict]) -> list[dict]:
    """Events (in log order) that no later event references: the heads to build on."""
    events = list(events)
    referenced: set[str] = set()
    for e in events:
        referenced.add(e.get("prev_hash"))
        referenced.update(e.get("merged") or ())
    seen: set[str] = set()
    out = []
    for e in events:
        h = e.get("hash")
        if h not in referenced and h not in seen:
            seen.add(h)
            out.append(e)
    return out


def append_to_log(tail: Sequence[dict], event: dict) -> dict:
    """Chain `event` onto a log whose last events are `tail` (all tips merged)."""
    heads = tips(tail)
    if not heads:
        return chain_append(None, event)
    last = heads[-1]
    return chain_append(last, event, merged=heads[:-1])


@dataclass
class VerifyResult:
    ok: bool
    count: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    broken_seq: int | None = None
    broken_index: int | None = None
    reason: str | None = None
    forks: list[int] = field(default_factory=list)        # seqs where two events share a parent
    duplicates: list[int] = field(default_factory=list)   # byte-identical re-deliveries skipped
    open_tips: list[int] = field(default_factory=list)    # unmerged heads (normal right after a race)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def verify(events: Sequence[dict]) -> VerifyResult:
    """Check a log (in log order). The first break wins: its seq, index and why."""
    events = list(events)
    later = {e.get("hash"): i for i, e in enumerate(events) if isinstance(e, dict)}
    by_hash: dict[str, dict] = {GENESIS: {"seq": -1, "hash": GENESIS}}
    has_child: set[str] = set()
    referenced: set[str] = set()
    res = VerifyResult(ok=True)

    def broken(i: int, e: Any, why: str) -> VerifyResult:
        res.ok = False
        res.broken_index = i
        res.broken_seq = e.get("seq") if isinstance(e, dict) else None
        res.reason = why
        return res

    kept = 0
    for i, e in enumerate(events):
        if not isinstance(e, dict) or not all(k in e for k in ("seq", "prev_hash", "hash")):
            return broken(i, e, "malformed event (not a chained audit event)")
        if event_hash(e) != e["hash"]:
            return broken(i, e, "altered: the event's content does not match its hash")
        if e["hash"] in by_hash:
            if canonical(by_hash[e["hash"]]) == canonical(e):
                res.duplicates.append(e["seq"])  # a producer retry delivered it twice
                continue
            return broken(i, e, "duplicate hash with different content")
        parents = [e["prev_hash"], *(e.get("merged") or [])]
        for p in parents:
            if p not in by_hash:
                if later.get(p, -1) > i:
                    return broken(i, e, "reordered: its predecessor appears later in the log")
                return broken(i, e, "predecessor missing: an earlier event was removed or rewritten "
                                    f"(no event has hash {p[:16]}...)")
        expected = max(by_hash[p]["seq"] for p in parents) + 1
        if e["seq"] != expected:
            return broken(i, e, f"seq {e['seq']} does not follow its predecessors (expected {expected})")
        if e["prev_hash"] in has_child:
            res.forks.append(e["seq"])  # a concurrent append on the same head
        has_child.add(e["prev_hash"])
        referenced.update(parents)
        by_hash[e["hash"]] = e
        kept += 1
        res.head_seq, res.head_hash = e["seq"], e["hash"]
    res.count = kept
    unreferenced = [e for h, e in by_hash.items() if h != GENESIS and h not in referenced]
    # A legitimate writer merges every tip among the last TAIL events it reads, so an
    # unreferenced event buried deeper than that was dropped from someone's view.
    position = {e["hash"]: i for i, e in enumerate(events) if isinstance(e, dict)}
    for e in unreferenced:
        if len(events) - 1 - position[e["hash"]] > TAIL:
            return broken(position[e["hash"]], e, "orphaned: no later event commits to this event")
    res.open_tips = sorted(e["seq"] for e in unreferenced) if len(unreferenced) > 1 else []
    return res


# --------------------------------------------------------------------------- Kafka I/O

async def read_partition(consumer, tp, start: int | str = "beginning", *, idle_ms: int = 50):
    """Yield every record of an assigned partition from `start` to the fetch
    high-watermark (never ListOffsets(latest): wrong on Tansu).

    The high-watermark must be fresh: a long-lived consumer (the audit writer's) has
    fetch responses in flight or buffered from before this call, whose high-watermark
    predates a write another process just had acknowledged. So the end is only trusted
    from a response to a request *sent* after the call began: the first response
    processed after the start may answer an older request, the one after it cannot
    (aiokafka sends a partition's next fetch only once the previous one is processed).
    """
    if start == "beginning":
        await consumer.seek_to_beginning(tp)
    elif isinstance(start, int):
        consumer.seek(tp, start)
    t0 = int(time.time() * 1000)
    first_after: int | None = None
    deadline = time.monotonic() + 30.0
    while True:
        batch = await consumer.getmany(tp, timeout_ms=idle_ms)
        for rec in batch.get(tp, ()):
            yield rec
        ts = consumer.last_poll_timestamp(tp)
        if ts is not None and ts >= t0:
            if first_after is None:
                first_after = ts
            elif ts > first_after:
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    return
        if time.monotonic() > deadline:
            raise AuditError(f"could not read {tp.topic}[{tp.partition}] to its end within 30 s")


def new_consumer(bootstrap: str):
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                            auto_offset_reset="earliest", fetch_max_wait_ms=20,
                            max_partition_fetch_bytes=4 << 20)


def new_producer(bootstrap: str):
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)


async def ensure_audit_topic(admin) -> None:
    """Create `fleetcloak.audit` with streams.topics' spec (one partition, delete, kept
    forever) if missing, and refuse a topic with more than one partition."""
    from fleetcloak.streams.topics import audit_topic, ensure_topics

    await ensure_topics(admin, [audit_topic()])
    meta = await admin.describe_topics([AUDIT_TOPIC])
    parts = meta[0].get("partitions") if meta else None
    if parts is not None and len(parts) != 1:
        raise AuditError(f"{AUDIT_TOPIC} has {len(parts)} partitions; the chain needs exactly 1")


async def ensure_chain_topic(admin, topic: str) -> None:
    if topic == AUDIT_TOPIC:
        return await ensure_audit_topic(admin)
    from fleetcloak.streams.topics import TopicSpec, ensure_topics  # tests' private trails

    await ensure_topics(admin, [TopicSpec(topic, 1, {"cleanup.policy": "delete", "retention.ms": "-1"})])


class AuditLog:
    """Append to and read the audit trail on a broker.

    One instance per process serialises its own appends (an asyncio lock) and keeps a
    consumer positioned at the end, so each append reads only what others added since.
    """

    def __init__(self, bootstrap: str, *, operator: str | None = None,
                 operator_source: str | None = None, topic: str = AUDIT_TOPIC) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        if operator is not None and operator_source is not None:
            self.operator, self.operator_source = operator, operator_source
        else:
            self.operator, self.operator_source = resolve_operator(operator)
        self.writer_id = f"{os.uname().nodename[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tail: deque[dict] = deque(maxlen=TAIL)
        self._lock = asyncio.Lock()
        self._producer = None
        self._consumer = None
        self._tp = None
        self._positioned = False

    async def start(self) -> "AuditLog":
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await ensure_chain_topic(admin, self.topic)
        finally:
            await admin.close()
        self._tp = TopicPartition(self.topic, 0)
        self._producer = new_producer(self.bootstrap)
        self._consumer = new_consumer(self.bootstrap)
        await self._producer.start()
        await self._consumer.start()
        self._consumer.assign([self._tp])
        return self

    async def stop(self) -> None:
        for client in (self._producer, self._consumer):
            if client is not None:
                await client.stop()
        self._producer = self._consumer = None

    async def __aenter__(self) -> "AuditLog":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _catch_up(self) -> None:
        if not self._positioned:
            # Start from the tail: end_offsets is a lower bound on Tansu (base offset of
            # the last batch + 1), so seeking TAIL before it still covers the last TAIL.
            end = (await self._consumer.end_offsets([self._tp]))[self._tp]
            start = max(0, end - TAIL)
            self._positioned = True
        else:
            start = None
        async for rec in read_partition(self._consumer, self._tp, start if start is not None else "current"):
            try:
                event = json.loads(rec.value)
            except (ValueError, TypeError):
                continue  # verify reports malformed events; a writer just skips them
            if isinstance(event, dict) and "hash" in event:
                self._tail.append(event)

    async def append(self, action: str, *, tenant: str | None = None, subject: str | None = None,
                     outcome: str = "ok", details: dict | None = None, ts_ms: int | None = None) -> dict:
        """Append one event (read head, chain, produce with acks=all) and return it."""
        event = make_event(action, operator=self.operator, operator_source=self.operator_source,
                           tenant=tenant, subject=subject, outcome=outcome, details=details,
                           ts_ms=ts_ms, writer=self.writer_id)
        async with self._lock:
            await self._catch_up()
            chained = append_to_log(list(self._tail), event)
            value = json.dumps(chained, sort_keys=True, separators=(",", ":")).encode()
            await self._producer.send_and_wait(self.topic, value, partition=0)
            # Our own event arrives through the consumer on the next catch-up, after any
            # event a concurrent writer slipped in before it: the tail stays in log order.
        return chained


async def read_audit(bootstrap: str, topic: str = AUDIT_TOPIC) -> list[tuple[int, dict | None]]:
    """Every event of the trail as (offset, event); None where a value is not JSON."""
    from aiokafka import TopicPartition

    consumer = new_consumer(bootstrap)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        out = []
        async for rec in read_partition(consumer, tp):
            try:
                out.append((rec.offset, json.loads(rec.value)))
            except (ValueError, TypeError):
                out.append((rec.offset, None))
        return out
    finally:
        await consumer.stop()


async def append_event(bootstrap: str, action: str, *, operator: str | None = None, **kw) -> dict:
    """One-shot append for CLIs: start a writer, append, stop."""
    async with AuditLog(bootstrap, operator=operator) as log:
        return await log.append(action, **kw)

"""The seam between the Kafka delivery loop and the pure pipeline.

The loop (streams/loop.py) knows Kafka and nothing about telematics; the pipeline knows
telematics and nothing about Kafka. They meet here:

    factory(control: ControlSnapshot) -> Pipeline          # built at start, rebuilt on change
    pipeline.process(batch: Sequence[RawMessage]) -> ProcessResult   # pure, synchronous
    pipeline.steps(batch) -> Generator[None, None, ProcessResult]    # optional: the same, in pieces

`process` gets a whole `getmany()` batch (all partitions, in offset order per partition)
and returns every output message for it plus the batch's accounting: single messages
(`outputs`: dead letters, key writes, anything with headers) and blocks of many
messages to one topic (`blocks`: the telemetry routes), which the loop turns into Kafka
record batches in one C call each instead of one Python call per message. It must not
do IO and must not keep a reference to the batch. It MAY raise: the loop then stops the worker
without committing anything of the batch (bad *input* is data, routed to the dead-letter
topic by the pipeline; an exception means a bug, and a bug must not be acked).

Nothing in this module imports Kafka or Faust, so pipeline tests build `RawMessage`s by
hand and never need a broker.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Generator, Mapping, Protocol, Sequence


class RawMessage(Protocol):
    """What `process` may read of a consumed message (aiokafka's ConsumerRecord fits as is)."""
    topic: str
    partition: int
    offset: int
    timestamp: int                      # ms since the epoch (producer CreateTime)
    key: bytes | None                   # telematics.raw: the IMEI as ASCII digits
    value: bytes | None                 # telematics.raw: one raw AVL frame
    headers: Sequence[tuple[str, bytes]]  # telematics.raw: received_at, transport


@dataclass(frozen=True, slots=True)
class Message:
    """A RawMessage built by hand (tests, benches, the simulator's file sink)."""
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    topic: str = "telematics.raw"
    partition: int = 0
    offset: int = 0
    timestamp: int = 0


# (topic, key, value, headers). key None -> any partition; value None -> a tombstone (for
# compacted topics, e.g. a key write to fleetcloak.keys that rides with the batch);
# headers a list of (str, bytes), or None.
Output = tuple[str, "bytes | None", "bytes | None", "Sequence[tuple[str, bytes]] | None"]


@dataclass(frozen=True, slots=True)
class OutputBlock:
    """Many output messages to one topic, without headers: (keys[i], values[i]), in order.
    A key None goes to any partition; values are bytes (no tombstones in a block)."""
    topic: str
    keys: "list[bytes | None]"
    values: list[bytes]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values):
            raise ValueError(f"OutputBlock for {self.topic}: {len(self.keys)} keys but {len(self.values)} values")

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Counts:
    """A batch's accounting, in the pipeline's unit (records), such that
    `received == sum(forwarded) + sum(deadlettered) + sum(dropped)`.

    Labels are low-cardinality and never identify a person or a device:
      forwarded    keyed by (route, tenant slug); route is "processor" or "controller"
      deadlettered keyed by reason (e.g. "bad_crc", "unknown_device")
      dropped      keyed by (rule, tenant slug) (e.g. ("too_old", "acme"))
    Use tenant "" where no tenant is known. A raw message that cannot be decoded has no
    known records: count it as one received and one dead-lettered.

    Note on the controller route: one record may be forwarded to both routes. Count its
    fate once, under the processor route, and count the analytics copy in `copies`
    (keyed like `forwarded`) so the identity above still holds. A forwarded record kept
    off the analytics route is counted in `skipped` by rule ("objected", "private_mode",
    "analytics_refused", "subject_erased"), also outside the identity.
    """
    received: int = 0
    forwarded: Counter = field(default_factory=Counter)     # (route, tenant) -> n
    deadlettered: Counter = field(default_factory=Counter)  # reason -> n
    dropped: Counter = field(default_factory=Counter)       # (rule, tenant) -> n
    copies: Counter = field(default_factory=Counter)        # (route, tenant) -> n, outside the identity
    skipped: Counter = field(default_factory=Counter)       # (rule, tenant) -> n: kept off the analytics route

    def accounted(self) -> int:
        return sum(self.forwarded.values()) + sum(self.deadlettered.values()) + sum(self.dropped.values())

    def balanced(self) -> bool:
        return self.received == self.accounted()

    def add(self, other: "Counts") -> None:
        self.received += other.received
        self.forwarded.update(other.forwarded)
        self.deadlettered.update(other.deadlettered)
        self.dropped.update(other.dropped)
        self.copies.update(other.copies)
        self.skipped.update(other.skipped)


@dataclass
class ProcessResult:
    outputs: list[Output]
    counts: Counts
    blocks: list[OutputBlock] = field(default_factory=list)

    def __len__(self) -> int:
        """Output messages in all."""
        return len(self.outputs) + sum(map(len, self.blocks))

    def messages(self) -> list[Output]:
        """Every output message as an Output tuple: the single ones, then each block's."""
        out = list(self.outputs)
        for b in self.blocks:
            out.extend((b.topic, k, v, None) for k, v in zip(b.keys, b.values))
        return out


ProcessFn = Callable[[Sequence[RawMessage]], ProcessResult]


@dataclass(frozen=True)
class Pipeline:
    """What a factory returns: the pure function, and the output topics it needs.

    `topics` are TopicSpecs (streams/topics.py) the loop creates, if missing, before the
    pipeline sees its first batch: a tenant's topic with its retention window must
    exist before anything is written to it (no broker auto-creation with defaults).

    `refresh(changed, snapshot) -> bool`, if given, is offered every control change
    first (between batches; `changed` is the set of roles among "policies", "keys",
    "subjects" that changed since the last refresh or build). Returning True means the
    pipeline absorbed it (e.g. a keystore syncing a salt another worker minted) and no
    rebuild is needed; False, or no refresh, means the factory builds a new pipeline.

    `steps(batch)`, if given, is `process` cut into pieces: a generator that yields
    (None) between pieces of work and returns the same ProcessResult. The in-loop runner
    drives it and turns the event loop at each yield, so the producer's requests and
    acknowledgements move on while a long batch is processed; a runner that runs the
    pipeline elsewhere calls `process`. Both must give the same result.
    """
    process: ProcessFn
    topics: tuple = ()
    description: str = ""
    refresh: "Callable[[frozenset[str], ControlSnapshot], bool] | None" = None
    steps: "Callable[[Sequence[RawMessage]], Generator[None, None, ProcessResult]] | None" = None


@dataclass(frozen=True)
class ControlSnapshot:
    """The control plane as of one instant: key bytes -> latest value bytes per topic.

    `policies`: fleetcloak.policies (key = tenant slug); `keys`: fleetcloak.keys (wrapped
    key epochs, unwrap with the master key); `subjects`: fleetcloak.subjects (rights
    state). Values are opaque here; the pipeline's factory parses them. `version`
    increases with every change seen, so a factory may cache.
    """
    policies: Mapping[bytes, bytes]
    keys: Mapping[bytes, bytes]
    subjects: Mapping[bytes, bytes]
    version: int = 0


PipelineFactory = Callable[[ControlSnapshot], "Pipeline | ProcessFn"]


def run_steps(steps: Generator[None, None, ProcessResult]) -> ProcessResult:
    """A `steps` generator run to the end, without pauses: its ProcessResult."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def as_pipeline(built: "Pipeline | ProcessFn") -> Pipeline:
    return built if isinstance(built, Pipeline) else Pipeline(process=built)


# --- the placeholder pipeline ------------------------------------------------------------
# Until the real pipeline (decode -> registry -> gates -> routes) is plugged in, the worker
# can run this one: every raw message is copied unchanged to one topic. It exists to test
# and benchmark delivery, never to run in production: it forwards raw identifiers.

PASSTHROUGH_TOPIC = "fleetcloak.passthrough"


def passthrough_factory(output_topic: str = PASSTHROUGH_TOPIC, partitions: int = 4) -> PipelineFactory:
    from fleetcloak.streams.topics import TopicSpec, _retention

    spec = TopicSpec(output_topic, partitions, _retention(1))

    def process(batch: Sequence[RawMessage]) -> ProcessResult:
        outputs = [(output_topic, m.key, m.value, m.headers) for m in batch]
        counts = Counts(received=len(outputs))
        counts.forwarded[("passthrough", "")] = len(outputs)
        return ProcessResult(outputs, counts)

    def factory(control: ControlSnapshot) -> Pipeline:
        return Pipeline(process, topics=(spec,), description=f"passthrough -> {output_topic}")

    return factory

"""The worker's consumer reads fetched batches in C instead of a Python object per message.

aiokafka's `PartitionRecords` turns a fetched partition into `ConsumerRecord`s one message
at a time in Python (about 12 % of the worker's CPU). `use_fast_fetch(consumer)` makes one
started AIOKafkaConsumer read them with `read_batches` (streams/_recordbatch.c): a whole
run of batches per C call, into `FetchedRecord`s, which have every attribute of a
ConsumerRecord (topic, partition, offset, timestamp, timestamp_type, key, value, checksum,
serialized_key_size, serialized_value_size, headers).

How (checked against aiokafka 0.14.0): aiokafka creates the consumer's Fetcher in
`start()`; its coroutine `Fetcher._proc_fetch_request` turns a fetch response into
`FetchResult(PartitionRecords(MemoryRecords(bytes)))` per partition. `use_fast_fetch`
gives that one Fetcher instance its own copy of the coroutine, the same code with three
names resolved to this module instead of aiokafka's module:
    MemoryRecords    -> _Fetched: aiokafka's MemoryRecords, which also keeps the bytes;
    PartitionRecords -> FastPartitionRecords: reads them with read_batches;
    FetchResult      -> _fetch_result: aiokafka's own FetchResult (`fetched_records` checks
                        `type(...) is FetchResult`) whose getall takes a slice of the read
                        records instead of a Python loop per message.
No other consumer and no aiokafka module is touched. Records fetched before the call are
read by aiokafka's code as before. If aiokafka's internals are not what this relies on,
use_fast_fetch raises RuntimeError naming what is missing; other versions log a warning.

Behaviour is aiokafka's: records below the fetch offset are skipped, next_fetch_offset
follows the same rules (the last record handed out + 1; after a batch, its last offset +
1), a CRC mismatch raises CorruptRecordException (when check_crcs, the default). Whatever
read_batches does not read goes to aiokafka's own PartitionRecords code, one batch at a
time: compressed, control or transactional batches, magic v0/v1 message sets, malformed
batches (aiokafka raises its own error for them). A consumer with a key or value
deserializer or isolation_level="read_committed" is left entirely to aiokafka
(use_fast_fetch returns False). One difference, on the safe side: records read before a
batch that fails its CRC are handed out first and the error raised on the next call
(aiokafka raises at once and drops them).
"""
from __future__ import annotations

import inspect
import logging
import struct
import types

import aiokafka
import aiokafka.errors as Errors
from aiokafka.consumer import fetcher as _aiokafka_fetcher
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, FetchResult, Fetcher, PartitionRecords
from aiokafka.record.memory_records import MemoryRecords

from fleetcloak.streams.recordbatch import STOP_BAD_CRC, STOP_END, read_batches

log = logging.getLogger(__name__)

CHECKED_AIOKAFKA = "0.14.0"
_LENGTH = struct.Struct(">i")  # a batch's length field, at byte 8 of every message-set format


class _Fetched:
    """What `MemoryRecords(data)` gives the fetch coroutine: aiokafka's MemoryRecords (the
    coroutine asks has_next() and size_in_bytes()) and the bytes, for FastPartitionRecords."""

    __slots__ = ("data", "_records")

    def __init__(self, data) -> None:
        self.data = data
        self._records = MemoryRecords(data)

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self):
        return self._records.next_batch()

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()


class FastPartitionRecords(PartitionRecords):
    """One fetched partition, read by runs of batches in C (see the module doc).

    `take(n)` hands out the next records; iterating (FetchResult.getone) takes one at a
    time. State: `_ready[_taken:]` are read and not handed out yet; once they all are,
    next_fetch_offset becomes `_ready_next`; `_pos` is where reading goes on, and `_stop`
    says what is there (None: not read yet; else read_batches' stop).
    """

    def __init__(self, tp, records, aborted_transactions, fetch_offset, key_deserializer,
                 value_deserializer, check_crcs, isolation_level) -> None:
        super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer,
                         value_deserializer, check_crcs, isolation_level)
        self._records_iterator = None  # aiokafka's generator: not used
        self._data = records.data
        self._ready: list = []
        self._taken = 0
        self._ready_next = fetch_offset
        self._pos = 0
        self._stop: int | None = None
        self._done = False

    def take(self, max_records: int | None = None) -> list:
        """Up to max_records records (None: all that are left); [] once none are left.

        It raises (CorruptRecordException, or aiokafka's error for a batch it reads) only
        before it has any record to hand out, so no record is dropped with the error.
        """
        out: list = []
        while True:
            ready, taken = self._ready, self._taken
            left = len(ready) - taken
            room = left if max_records is None else max_records - len(out)
            if left > room:  # only part of them fits
                self._taken = taken + room
                out += ready[taken:taken + room]
                self.next_fetch_offset = out[-1].offset + 1
                return out
            if left:
                if out or taken:
                    out += ready[taken:]
                else:
                    out = ready  # the usual case: a whole run of batches in one list
            self._ready, self._taken = [], 0
            self.next_fetch_offset = self._ready_next
            if (max_records is not None and len(out) >= max_records) or not self._read_more(may_raise=not out):
                return out

    @property
    def exhausted(self) -> bool:
        """Nothing left to hand out: the FetchResult can be dropped."""
        return self._taken >= len(self._ready) and (self._done or self._stop == STOP_END)

    def _read_more(self, *, may_raise: bool) -> bool:
        """Fill _ready from _pos (it may stay empty: an empty batch); False when nothing
        more can be read now: at the end, or before a step that may raise unless may_raise."""
        if self._done:
            return False
        if self._stop is None:
            tp = self._tp
            self._ready, self._ready_next, self._pos, self._stop = read_batches(
                self._data, self._pos, tp.topic, tp.partition, self.next_fetch_offset, self._check_crcs)
            return True
        if self._stop == STOP_END:
            self._done = True
            return False
        if not may_raise:
            return False
        self._done = True  # if the batch raises, nothing more is read (as aiokafka's generator)
        if self._stop == STOP_BAD_CRC:
            raise Errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
        self._ready = self._aiokafka_batch()
        self._ready_next = self.next_fetch_offset
        self._stop = None
        self._done = False
        return True

    def _aiokafka_batch(self) -> list:
        """The batch at _pos read by aiokafka's own PartitionRecords code (which moves
        next_fetch_offset as it goes)."""
        data, pos = self._data, self._pos
        (length,) = _LENGTH.unpack_from(data, pos + 8)
        end = pos + 12 + length if length >= 0 else len(data)  # read_batches saw it whole
        self._pos = end
        self._records = MemoryRecords(bytes(data[pos:end]))
        return list(PartitionRecords._unpack_records(self))

    def __next__(self):
        got = self.take(1)
        if not got:
            raise StopIteration
        return got[0]


def _getall(self: FetchResult, max_records: int | None = None) -> list:
    """FetchResult.getall, the records taken as one slice (same checks and position update)."""
    if not self.check_assignment(self._topic_partition) or not self.has_more():
        return []
    records = self._partition_records
    got = records.take(max_records)
    self._update_position()
    if records.exhausted:
        self._partition_records = None
    return got


def _fetch_result(tp, *, assignment, partition_records, backoff) -> FetchResult:
    result = FetchResult(tp, assignment=assignment, partition_records=partition_records, backoff=backoff)
    result.getall = types.MethodType(_getall, result)
    return result


def _check_internals(fetcher) -> None:
    """RuntimeError naming what is missing, if aiokafka is not shaped as this module relies on."""
    problems = []
    if type(fetcher) is not Fetcher:
        problems.append(f"consumer._fetcher is a {type(fetcher).__name__}, not aiokafka's Fetcher")
    code = getattr(getattr(Fetcher, "_proc_fetch_request", None), "__code__", None)
    if code is None or not inspect.iscoroutinefunction(Fetcher._proc_fetch_request):
        problems.append("Fetcher._proc_fetch_request is not a coroutine function")
    else:
        missing = {"MemoryRecords", "PartitionRecords", "FetchResult"} - set(code.co_names)
        if missing or code.co_freevars:
            problems.append(f"Fetcher._proc_fetch_request no longer names {sorted(missing)} as globals"
                            if missing else "Fetcher._proc_fetch_request is a closure")
    want = {PartitionRecords: ["tp", "records", "aborted_transactions", "fetch_offset", "key_deserializer",
                               "value_deserializer", "check_crcs", "isolation_level"],
            FetchResult: ["tp", "assignment", "partition_records", "backoff"]}
    for cls, params in want.items():
        if list(inspect.signature(cls).parameters) != params:
            problems.append(f"{cls.__name__}{inspect.signature(cls)} is not {cls.__name__}({', '.join(params)})")
    for cls, names in {PartitionRecords: ["_unpack_records", "_consumer_record"],
                       FetchResult: ["check_assignment", "has_more", "_update_position", "getall"]}.items():
        problems += [f"{cls.__name__}.{n} is missing" for n in names if not callable(getattr(cls, n, None))]
    for attr in ("_key_deserializer", "_value_deserializer", "_check_crcs", "_isolation_level", "_records"):
        if not hasattr(fetcher, attr):
            problems.append(f"Fetcher has no {attr}")
    if problems:
        raise RuntimeError(f"fleetcloak.streams.fetch was written against aiokafka {CHECKED_AIOKAFKA}; "
                           f"aiokafka {aiokafka.__version__} differs: " + "; ".join(problems))


def use_fast_fetch(consumer) -> bool:
    """Make this started consumer read its fetched batches in C (see the module doc).

    Call it once after `await consumer.start()`, before records are expected. Returns
    False and changes nothing for a consumer aiokafka must read entirely (a key or value
    deserializer, or read_committed). RuntimeError if the consumer is not started or
    aiokafka's internals are not the ones this was checked against.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        raise RuntimeError("use_fast_fetch(consumer) needs a started consumer: aiokafka creates its Fetcher in start()")
    _check_internals(fetcher)
    if aiokafka.__version__ != CHECKED_AIOKAFKA:
        log.warning("fleetcloak.streams.fetch was checked against aiokafka %s, running on %s",
                    CHECKED_AIOKAFKA, aiokafka.__version__)
    if (fetcher._key_deserializer is not None or fetcher._value_deserializer is not None
            or fetcher._isolation_level != READ_UNCOMMITTED):
        log.info("consumer keeps aiokafka's record reading (deserializers or read_committed)")
        return False
    proc = Fetcher._proc_fetch_request
    fast_globals = dict(vars(_aiokafka_fetcher), MemoryRecords=_Fetched,
                        PartitionRecords=FastPartitionRecords, FetchResult=_fetch_result)
    fast_proc = types.FunctionType(proc.__code__, fast_globals, proc.__name__, proc.__defaults__, proc.__closure__)
    fast_proc.__kwdefaults__ = proc.__kwdefaults__
    fetcher._proc_fetch_request = types.MethodType(fast_proc, fetcher)
    return True

"""The telemetry pipeline: what the worker does to each batch of `telematics.raw`.

    raw ─▶ decode_batch ─ error ─▶ telematics.deadletter (original bytes + reason)
          └▶ device registry (IMEI -> tenant; unknown -> deadletter)
          ─▶ retention gate   (older than the tenant's window / in the future: dropped)
          ─▶ subject gate     (erased / restricted subjects stop here; objection only
                               removes them from the controller route)
          ─▶ duplicate gate   (a device's retransmission of a record already forwarded,
                               by the processor route's deterministic record_id)
          ─▶ processor route  ─▶ tenant.<tenant>.telemetry
          ─▶ controller route ─▶ analytics.telemetry

Pure and synchronous (streams/seam.py): `process(batch)` (or `steps(batch)`, the same
in pieces, for the in-loop runner to turn the event loop between tenants) returns the
output messages and the batch's accounting; the loop (streams/loop.py) produces them, awaits their
delivery and only then commits. Keys minted while processing (a subject's first
controller salt) leave as outputs to `fleetcloak.keys` in the same batch.

Accounting unit: a record; a raw message whose frame cannot be decoded counts as one
(its records cannot be counted). `received == forwarded + deadlettered + dropped` holds
for every batch. A record is counted once, by its processor-route fate; its analytics
copy is counted in `copies`, and the analytics route's own exclusions in `skipped`.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.ma  # noqa: F401  np.unique imports it on its first call: load it at worker start, not in the first batch
from h3 import _cy  # noqa: F401  likewise for anonymize/coarsen.py's H3 calls (~0.1 s together, measured in the first batch)

from fleetcloak.anonymize.batch_columns import columns_from_batch
from fleetcloak.anonymize.pseudonyms import unique_objects
from fleetcloak.anonymize.render import controller_json, packets_json, processor_json
from fleetcloak.codecs import DecodeError, decode_batch
from fleetcloak.codecs import udp
from fleetcloak.streams import _idwindow
from fleetcloak.streams.recordbatch import message_columns
from fleetcloak.streams.seam import (
    ControlSnapshot, Counts, OutputBlock, Pipeline, ProcessResult, RawMessage, run_steps,
)
from fleetcloak.streams.topics import (
    ANALYTICS, DEADLETTER, KEYS, MAX_TELEMETRY_RETENTION_DAYS, analytics_topic, deadletter_topic,
    tenant_topic, tenant_topic_name,
)

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
FUTURE_TOLERANCE_MS = 5 * 60_000      # device clocks run a little ahead; more is a wrong clock
DRIVER_IO = 78                        # iButton: the driver id the subject gate checks


# ----------------------------------------------------------------------------- dedup
class DuplicateWindow:
    """record_ids forwarded recently, to forward a device's retransmission only once.

    Bounded by count, in two generations (streams/_idwindow.c): new ids go into the young
    one; when it holds capacity/2 ids it becomes the old one and the previous old one is
    forgotten. So the window remembers at least the capacity/2 most recent ids (an id
    seen again counts as recent) and at most `capacity`: minutes to hours of traffic, far
    inside any retention window. It keeps the 130 bits of an id's first 26 characters,
    not the str objects: equal keys are equal ids, so no collision drops a record. Medians
    of batches of 47,000 new ids on a filled window: ~190-200 ns an id, against ~380-410
    for the Python sets it replaces. It is a courtesy, not the guarantee: after a restart
    or a rebalance the window is empty and consumers drop the rest by `record_id`
    (at-least-once delivery).
    """

    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self._window = _idwindow.Window(capacity)

    def __len__(self) -> int:
        return len(self._window)

    def clear(self) -> None:
        self._window.clear()

    def fresh(self, record_ids: Sequence[str]) -> np.ndarray:
        """True for ids not seen before (nor earlier in this call); remembers them all.
        ValueError for anything that is not a record id (26 or more characters a-z, 2-7)."""
        return np.frombuffer(self._window.fresh(record_ids), dtype=bool)


# ----------------------------------------------------------------------------- helpers
class _Codes:
    """A batch's IMEIs and families coded once per frame; a tenant's rows then get their
    distinct values and indexes by integer operations (no pass over record objects)."""

    def __init__(self, frame_imei: np.ndarray, frame_family: np.ndarray, frame_index: np.ndarray) -> None:
        self.imei_uniq, imei_inv = unique_objects(frame_imei)
        self.family_uniq, family_inv = unique_objects(frame_family)
        self.rec_imei = imei_inv[frame_index]
        self.rec_family = family_inv[frame_index]

    def imei_codes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns.imei_codes of these rows: only the IMEIs present in them."""
        return _compact(self.rec_imei[rows], self.imei_uniq)

    def families(self, rows: np.ndarray) -> np.ndarray:
        """The family of each of these rows (an object column)."""
        return self.family_uniq[self.rec_family[rows]]

    def family_rows(self, rows: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Columns.family_rows of these rows: (family, its row indexes), families sorted."""
        uniq, inv = _compact(self.rec_family[rows], self.family_uniq)
        if len(uniq) == 1:
            return [(uniq[0], np.arange(len(inv)))]
        return [(uniq[i], np.flatnonzero(inv == i)) for i in sorted(range(len(uniq)), key=lambda i: uniq[i])]


def _compact(codes: np.ndarray, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values of `uniq` that `codes` uses (in uniq's order), and codes re-indexed into them."""
    used = np.zeros(len(uniq), dtype=bool)
    used[codes] = True
    present = np.flatnonzero(used)
    if len(present) == len(uniq):
        return uniq, codes
    remap = np.zeros(len(uniq), dtype=np.intp)
    remap[present] = np.arange(len(present))
    return uniq[present], remap[codes]


def udp_header_error(dgram: bytes, imei: str) -> DecodeError:
    """Why a datagram whose header udp.header_is() refused goes to the dead letters:
    udp.header()'s reason, else an IMEI that is not the message key's (offsets are the
    datagram's)."""
    try:
        udp.header(dgram)
    except DecodeError as e:
        # without its traceback: kept by the caller's frame, it would hold that frame in a
        # cycle (traceback -> frame -> f_back -> the batch's frame -> the error) and, with
        # it, the whole batch until a full collection (the child collects every 64 batches)
        return e.with_traceback(None)
    return DecodeError("bad_imei", 8, "the datagram's IMEI is not the message key's")


class _Rows:
    """Some messages of a batch, by their indexes in it (a frame's source)."""

    __slots__ = ("_batch", "_rows")

    def __init__(self, batch: Sequence[RawMessage], rows: list[int]) -> None:
        self._batch, self._rows = batch, rows

    def __getitem__(self, k: int) -> RawMessage:
        return self._batch[self._rows[k]]


def _deadletter(m: RawMessage, reason: str, detail: str, offset: int) -> tuple:
    """The original message, untouched, plus why. The dead-letter topic lives in the same
    trust zone as telematics.raw (operators only, 30 days): it keeps the key so the
    message can be replayed after a fix."""
    headers = [(k, v) for k, v in (m.headers or ())]
    headers += [
        ("deadletter.reason", reason.encode()),
        ("deadletter.detail", detail.encode()[:512]),
        ("deadletter.offset", str(offset).encode()),
        ("source", f"{m.topic}/{m.partition}/{m.offset}".encode()),
    ]
    return (DEADLETTER, m.key, m.value if m.value is not None else b"", headers)


# ----------------------------------------------------------------------------- the pipeline
@dataclass
class TenantRoute:
    """What one tenant's records go through, built from its policy."""

    tenant: str
    topic: str
    window_ms: int
    per_packet: bool
    processor: object                # anonymize.ProcessorTransform
    controller: object               # anonymize.ControllerTransform
    io_ids: tuple[int, ...]          # IO columns the transforms read


@dataclass
class TelemetryPipeline:
    """decode -> registry -> gates -> routes, for one state of the control plane."""

    policies: object                                  # anonymize.PolicySet
    routes: dict[str, TenantRoute]
    subjects: object                                  # streams.rights.SubjectGate
    keystore: object                                  # TableKeyStore (drained into outputs)
    duplicates: DuplicateWindow = field(default_factory=DuplicateWindow)
    clock: Callable[[], float] = time.time
    future_tolerance_ms: int = FUTURE_TOLERANCE_MS
    _known_keys: dict = field(default_factory=dict, repr=False)

    # --- the seam ---------------------------------------------------------------------
    def process(self, batch: Sequence[RawMessage]) -> ProcessResult:
        """The whole batch at once: `steps` run to the end."""
        return run_steps(self.steps(batch))

    def steps(self, batch: Sequence[RawMessage]) -> Generator[None, None, ProcessResult]:
        """`process` in steps: yields between pieces of work (each tenant's processor and
        controller routes) and returns the ProcessResult. The in-loop runner turns the
        event loop at each yield, so the producer's acknowledgements and requests and the
        next fetch move on while the batch is processed (streams/runner.py)."""
        # A batch allocates hundreds of thousands of acyclic containers (dicts, tuples,
        # lists) that refcounting frees; the cyclic collector would walk them over and
        # over (~20% of the batch). Paused for the batch only (its pauses between steps
        # included: the event loop runs then, briefly), as it was found.
        if not gc.isenabled():
            return (yield from self._steps(batch))
        gc.disable()
        try:
            return (yield from self._steps(batch))
        finally:
            gc.enable()

    def _steps(self, batch: Sequence[RawMessage]) -> Generator[None, None, ProcessResult]:
        outputs: list[tuple] = []
        blocks: list[OutputBlock] = []
        counts = Counts()
        frames, sources, imeis, datagram = self._frames(batch, outputs, counts)
        if frames:
            yield from self._records(frames, sources, imeis, outputs, blocks, counts, datagram)
        for name, value in self.keystore.drain():
            outputs.append((KEYS, name, value, None))
        return ProcessResult(outputs, counts, blocks)

    def _frames(self, batch: Sequence[RawMessage], outputs: list, counts: Counts) -> tuple:
        """The batch's frames to decode: (frames, their sources, IMEIs, UDP flags or None).
        A message whose key is not an IMEI, or whose UDP header udp.header_is() refuses,
        goes to the dead letters here, in batch order. Column by column (message_columns:
        the worker's child gets its batches as PackedRecords, no record objects)."""
        keys, values, transports = message_columns(batch, "transport")
        known = self._known_keys  # message key -> IMEI, for keys already validated
        if len(known) > 100_000:
            known.clear()
        imeis = list(map(known.get, keys))
        rejected: dict[int, tuple[str, str, int]] = {}  # message -> (reason, detail, offset)
        if None in imeis:
            for i in [i for i, imei in enumerate(imeis) if imei is None]:
                imei = _imei_of(keys[i])
                if imei is None:
                    rejected[i] = ("bad_key", "the message key is not a 15-digit IMEI", 0)
                else:
                    known[keys[i]] = imeis[i] = imei
        if None in values:
            values = [v or b"" for v in values]
        datagram = None
        udp_rows = [i for i, t in enumerate(transports) if t == b"udp" and i not in rejected]
        if udp_rows:
            # decode_batch reads the AVL part in place: no TCP frame built, no CRC computed
            # to be checked (2-4 us a datagram, a third of the bench fleet's)
            datagram = [False] * len(values)
            for i in udp_rows:
                if udp.header_is(values[i], keys[i]):
                    datagram[i] = True
                else:
                    e = udp_header_error(values[i], imeis[i])
                    rejected[i] = (e.reason, e.detail, e.offset)
        if not rejected:
            return values, batch, imeis, datagram
        for i in sorted(rejected):
            reason, detail, offset = rejected[i]
            counts.received += 1
            counts.deadlettered[reason] += 1
            outputs.append(_deadletter(batch[i], reason, detail, offset))
        kept = [i for i in range(len(values)) if i not in rejected]
        return ([values[i] for i in kept], _Rows(batch, kept), [imeis[i] for i in kept],
                [datagram[i] for i in kept] if datagram is not None else None)

    def _records(self, frames, sources, imeis, outputs, blocks, counts, datagram=None) -> None:
        batch = decode_batch(frames, udp=datagram if datagram is not None and any(datagram) else None)
        for k, err in batch.errors:
            counts.received += 1
            counts.deadlettered[err.reason] += 1
            outputs.append(_deadletter(sources[k], err.reason, err.detail, err.offset))
        if not len(batch):
            return
        counts.received += len(batch)
        frame_imei = np.asarray(imeis, dtype=object)
        rec_imei = frame_imei[batch.frame_index]
        tenants, families = self.policies.registry(frame_imei)
        # IMEIs and families as integer codes, one object pass per frame, not per record
        codes = _Codes(frame_imei, families, batch.frame_index)
        # unknown devices: the whole message goes to the dead-letter topic
        unknown = np.flatnonzero(np.equal(tenants, None) & batch.frame_ok)
        for k in unknown.tolist():
            counts.deadlettered["unknown_device"] += int(batch.frame_records[k])
            outputs.append(_deadletter(sources[k], "unknown_device", "no tenant policy lists this device", 0))
        now_ms = int(self.clock() * 1000)
        ts = batch.timestamp_ms.astype(np.int64)
        # tenant of each record as an integer code: one object pass per frame, not per tenant
        names = sorted({t for t in tenants.tolist() if t is not None})
        code_of = {t: i for i, t in enumerate(names)}
        frame_code = np.fromiter((code_of.get(t, -1) if t is not None else -1 for t in tenants.tolist()),
                                 dtype=np.int64, count=len(tenants))
        rec_code = frame_code[batch.frame_index]
        for i, tenant in enumerate(names):
            rows = np.flatnonzero(rec_code == i)
            route = self.routes[tenant]
            yield from self._tenant(route, batch, rows, rec_imei, codes, ts, now_ms,
                                    sources, outputs, blocks, counts)

    def _tenant(self, route: TenantRoute, batch, rows, rec_imei, codes: "_Codes", ts, now_ms,
                sources, outputs, blocks, counts) -> None:
        t = route.tenant
        # retention gate
        rts = ts[rows]
        too_old = rts < now_ms - route.window_ms
        future = rts > now_ms + self.future_tolerance_ms
        if too_old.any():
            counts.dropped[("too_old", t)] += int(too_old.sum())
        if future.any():
            counts.dropped[("future", t)] += int(future.sum())
        rows = rows[~(too_old | future)]
        if not len(rows):
            return
        # subject gate (only tenants with rights requests pay for it)
        allow_ctrl = np.ones(len(rows), dtype=bool)
        if self.subjects is not None and self.subjects.state.has_entries(t):
            drv = batch.io_column(DRIVER_IO)[rows].tolist()
            allow_proc, allow_ctrl = self.subjects.masks(
                t, rec_imei[rows].tolist(), [d or None for d in drv])
            blocked = ~allow_proc
            if blocked.any():
                counts.dropped[("subject_blocked", t)] += int(blocked.sum())
                rows, allow_ctrl = rows[allow_proc], allow_ctrl[allow_proc]
                if not len(rows):
                    return
        sub = batch.select(rows)
        family_rows = codes.family_rows(rows)
        cols = columns_from_batch(sub, rec_imei[rows], io_ids=route.io_ids,
                                  family=family_rows[0][0] if len(family_rows) == 1 else codes.families(rows))
        cols.known_codes(imei_codes=codes.imei_codes(rows), family_rows=family_rows)
        proc = route.processor.apply(cols)
        # duplicate gate: the processor's record_id is deterministic per record
        fresh = self.duplicates.fresh(proc.record_id.tolist())
        n_dup = int((~fresh).sum())
        if n_dup:
            counts.dropped[("duplicate", t)] += n_dup
        keep = np.flatnonzero(fresh)
        if not len(keep):
            return
        values = processor_json(proc, sub, keep)
        counts.forwarded[("processor", t)] += len(values)
        devices = proc.device[keep].tolist()
        topic = route.topic
        if route.per_packet:
            frame_of = sub.frame_index[keep]
            if (frame_of[1:] >= frame_of[:-1]).all():  # in decode order: a packet's records are adjacent
                heads = np.flatnonzero(np.concatenate(([True], frame_of[1:] != frame_of[:-1])))
                devs = [devices[a] for a in heads.tolist()]
                packed = packets_json(values, np.append(heads, len(values)))
            else:
                by_frame: dict[int, list] = {}
                for f, v, dev in zip(frame_of.tolist(), values, devices):
                    by_frame.setdefault(f, [dev]).append(v)
                devs = [g[0] for g in by_frame.values()]
                packed = [b'{"records":[' + b",".join(g[1:]) + b"]}" for g in by_frame.values()]
            blocks.append(OutputBlock(topic, _keys(devs), packed))
        else:
            blocks.append(OutputBlock(topic, _keys(devices), values))
        yield  # the processor route is done: let the loop move
        # controller route: fresh records the subjects allow
        cmask = fresh & allow_ctrl
        if not cmask.any():
            counts.skipped[("objected", t)] += int(fresh.sum())
            return
        hints = {"private": proc.private_raw, "zone": proc.zone}
        if allow_ctrl.all():
            # the same Columns, duplicates skipped: the controller reuses what the processor
            # derived from these records' identifiers (Columns.memo)
            ctrl = route.controller.apply(cols, **hints, skip=None if cmask.all() else ~cmask)
        else:  # objecting subjects' records are taken out before the route sees them
            idx = np.flatnonzero(cmask)
            ccols = cols.take(idx).known_codes(imei_codes=codes.imei_codes(rows[idx]),
                                               family_rows=codes.family_rows(rows[idx]))
            hints = {k: (None if v is None else v[idx]) for k, v in hints.items()}
            objected = int((fresh & ~allow_ctrl).sum())
            if objected:
                counts.skipped[("objected", t)] += objected
            ctrl = route.controller.apply(ccols, **hints)
        for rule, n in ctrl.drops.items():
            if n:
                counts.skipped[(rule, t)] += n
        cvalues = controller_json(ctrl)
        if cvalues:
            counts.copies[("controller", t)] += len(cvalues)
            cdevices = ctrl.device[ctrl.keep].tolist()
            blocks.append(OutputBlock(ANALYTICS, _keys(cdevices), cvalues))
        yield


def _keys(devices: list[str]) -> list[bytes]:
    """Message keys: each distinct device pseudonym encoded once."""
    enc = {d: d.encode() for d in dict.fromkeys(devices)}
    return list(map(enc.__getitem__, devices))


def _imei_of(key: bytes | None) -> str | None:
    if key is None or len(key) != 15 or not key.isdigit():
        return None
    return key.decode("ascii")


# ----------------------------------------------------------------------------- building
class PipelineBuilder:
    """The worker's PipelineFactory: builds a TelemetryPipeline from a control snapshot.

    Holds what must outlive a rebuild: the keyring (and its caches), the key table,
    the duplicate window, the analytics group gate, the subject keyer. A change of the
    keys topic alone (our own minted salts coming back) is absorbed by `refresh`: a
    table sync, not a rebuild.
    """

    def __init__(self, master=None, *, clock: Callable[[], float] = time.time) -> None:
        from fleetcloak.anonymize import Keyring
        from fleetcloak.anonymize.keystore import load_master_key
        from fleetcloak.anonymize.keystore import TableKeyStore

        self.master = master if master is not None else load_master_key("production")
        self.keystore = TableKeyStore()
        self.keyring = Keyring(self.keystore, self.master, create=True)
        self._duplicates: DuplicateWindow | None = None
        self.clock = clock
        self._group_gate = None
        self._keyer = None
        self._policies_seen: dict | None = None
        self._subjects_seen: dict | None = None
        self._pipeline: Pipeline | None = None

    @property
    def duplicates(self) -> "DuplicateWindow":
        """The duplicate window, made by the first build: in the process that uses it (the
        worker's pipeline child), which zeroes its ~25 MB of tables there and then, not
        page by page, copy-on-write, under the stream's first ids."""
        if self._duplicates is None:
            self._duplicates = DuplicateWindow()
        return self._duplicates

    def refresh(self, changed: frozenset[str], snap: ControlSnapshot) -> bool:
        """Absorb a change of the keys topic alone (our own minted salts coming back,
        another worker's, a shredded epoch) without a rebuild: no new pipeline, no topic
        round trip. Policies or subjects changing need a build (False)."""
        if not changed <= {"keys"}:
            return False
        self._sync_keys(snap)
        return True

    def _sync_keys(self, snap: ControlSnapshot) -> None:
        if self.keystore.sync(snap.keys):
            self.keyring.invalidate()

    def __call__(self, snap: ControlSnapshot) -> Pipeline:
        self._sync_keys(snap)
        policies, subjects = dict(snap.policies), dict(snap.subjects)
        if self._pipeline is not None and policies == self._policies_seen and subjects == self._subjects_seen:
            return self._pipeline
        if policies != self._policies_seen:
            self._routes = self._build_routes(policies)
        self._policies_seen, self._subjects_seen = policies, subjects
        from fleetcloak.streams.rights import gate_from_snapshot

        gate = gate_from_snapshot(subjects, self.keyring, keyer=self._keyer,
                                  clock=lambda: int(self.clock() * 1000))
        self._keyer = gate.keyer
        pipe = TelemetryPipeline(self._policy_set, self._routes, gate, self.keystore,
                                 duplicates=self.duplicates, clock=self.clock)
        topics = [deadletter_topic(), analytics_topic(self._analytics_days)]
        topics += [tenant_topic(r.tenant, r.window_ms // DAY_MS) for r in self._routes.values()]
        self._pipeline = Pipeline(pipe.process, topics=tuple(topics), refresh=self.refresh, steps=pipe.steps,
                                  description=f"telemetry pipeline: {len(self._routes)} tenant(s)")
        self._pipeline_obj = pipe
        return self._pipeline

    def _build_routes(self, policies: Mapping[bytes, bytes]) -> dict[str, TenantRoute]:
        from fleetcloak.anonymize import ControllerTransform, GroupGate, PolicySet, ProcessorTransform, ServicePolicy
        from fleetcloak.anonymize.service_policy import SERVICE_IO_FIELDS
        from fleetcloak.streams.rights import parse_policy_value

        parsed, sources = [], []
        for key, value in sorted(policies.items()):
            try:
                parsed.append(parse_policy_value(key, value))
                sources.append(key.decode(errors="replace"))
            except Exception as exc:  # a bad policy on the topic: refuse it, keep the others
                log.error("ignoring policy %r from fleetcloak.policies: %s", key.decode(errors="replace"), exc)
        pset = PolicySet(parsed, sources)
        service = pset.service
        if service is None:
            log.warning("no service policy on fleetcloak.policies: the analytics route uses the defaults "
                        "(H3 resolution 8, 15-minute buckets, k=5)")
            service = ServicePolicy(service="fleetcloak")
        if self._group_gate is None or self._group_gate.k != service.min_group_size:
            self._group_gate = GroupGate(service.min_group_size)
        self._policy_set = pset
        self._analytics_days = min(service.retention_days, MAX_TELEMETRY_RETENTION_DAYS)
        routes = {}
        for tenant, pol in pset.tenants.items():
            proc = ProcessorTransform(pol, self.keyring)
            ctrl = ControllerTransform(service, self.keyring, pol, gate=self._group_gate)
            families = set(pol.device_family.values()) or {"FMB"}
            io_ids = proc.io_ids_needed(families) | set(SERVICE_IO_FIELDS.values())
            routes[tenant] = TenantRoute(
                tenant=tenant, topic=tenant_topic_name(tenant),
                window_ms=min(pol.retention_days, MAX_TELEMETRY_RETENTION_DAYS) * DAY_MS,
                per_packet=pol.processor.output == "per_packet",
                processor=proc, controller=ctrl, io_ids=tuple(sorted(io_ids)),
            )
        log.info("pipeline built for %d tenant(s)%s", len(routes),
                 "" if pset.service is not None else " (default service policy)")
        return routes


def worker_factory() -> PipelineBuilder:
    """What `fleetcloak worker` runs (streams/cmd_worker.py DEFAULT_PIPELINE)."""
    return PipelineBuilder()

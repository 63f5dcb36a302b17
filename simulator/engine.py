"""The simulation loop: device-days -> emissions in arrival order.

Determinism: every random draw comes from a numpy Generator seeded by
(seed, stream, vehicle, day), with separate streams for the model (trips, telemetry),
the network (latencies) and the faults, so turning faults on never changes the model's
records, and nothing reads the wall clock. Simulated time runs as fast as the machine
goes; pacing (--realtime / --speed) is the caller's business (cli.py).

A simulated day runs in passes over all devices: the itineraries (DayPlanner.begin),
every drive at once (trips.plan_drives_many), the timelines, every record at once
(telemetry.build_many), their bytes (telemetry.encode_days), then each device's
packets and faults (device_day). Each pass makes every device's draws from its own
streams in the same order as a device-by-device run, so the output does not depend on
the batching.

Emissions of one simulated day are merged across devices, ordered by (received_at,
vehicle, sequence); an emission that arrives after midnight (a late resend) waits for
the next day, so the output is globally ordered by received_at.
"""
from __future__ import annotations

import bisect
import gc
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..codecs.packets import CODEC_16, AvlPacket
from . import faults as F
from .fleet import Fleet, build_fleet
from ..codecs.teltonika import encode_rows
from ..codecs.teltonika import frame_records
from .packetiser import (TCP_OVERHEAD, UDP_OVERHEAD, DeviceLink, Emission, chunk, encode_checked,
                         encode_checked_bytes, latency_array, make_packet, record_layout_size, send_groups)
from .telemetry import DayRecords, DriverTables, RecordFactory, build_many, encode_days
from .trips import DAY_S, DayPlanner, DeviceState, plan_drives_many

DAY_MS = DAY_S * 1000
YEAR_MS = 365 * DAY_MS

# Seed streams.
_MODEL, _NET, _FAULT = 1, 2, 3


@dataclass(frozen=True)
class SimConfig:
    seed: int
    tenants: int
    vehicles: int
    days: int
    start_s: int                     # simulated start, epoch seconds (midnight UTC)
    faults: F.FaultRates = field(default_factory=F.FaultRates)
    transport: str | None = None     # force every device onto "tcp" or "udp" (device sinks)

    @property
    def start_ms(self) -> int:
        return self.start_s * 1000

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    @property
    def too_old_before_ms(self) -> int:
        """A record older than this is fate too_old (generated ones are >= 400 days older)."""
        return self.start_ms - YEAR_MS

    @property
    def future_after_ms(self) -> int:
        """A record newer than this is fate future (generated ones are >= 366 days newer)."""
        return self.end_ms + YEAR_MS


def timestamp_fates(packet: AvlPacket, cfg: SimConfig) -> dict[str, int]:
    lo, hi = cfg.too_old_before_ms, cfg.future_after_ms
    old = fut = 0
    for r in packet.records:
        t = r.timestamp_ms
        if t < lo:
            old += 1
        elif t > hi:
            fut += 1
    out = {"valid": len(packet.records) - old - fut}
    if old:
        out["too_old"] = old
    if fut:
        out["future"] = fut
    return out


class Simulation:
    def __init__(self, cfg: SimConfig, keep_packets: bool = True):
        self.cfg = cfg
        self.keep_packets = keep_packets
        self.fleet: Fleet = build_fleet(cfg.seed, cfg.tenants, cfg.vehicles)
        if cfg.transport:
            for v in self.fleet.vehicles:
                v.transport = cfg.transport
        self.states = [DeviceState(*self.fleet.drivers[v.primary].home_xy) for v in self.fleet.vehicles]
        self.planners = [DayPlanner(self.fleet, v) for v in self.fleet.vehicles]
        tables = DriverTables(self.fleet)
        self.factories = [RecordFactory(self.fleet, v, tables) for v in self.fleet.vehicles]
        self.links = [DeviceLink() for _ in self.fleet.vehicles]
        self.max_record = [record_layout_size(v.codec, f.width_card) for v, f in
                           zip(self.fleet.vehicles, self.factories)]
        self.model_records = 0        # records the model made (before faults)
        self._lo, self._hi = cfg.too_old_before_ms, cfg.future_after_ms
        self._rec_faults = any(cfg.faults.get(k) > 0 for k in F.RECORD_FAULTS)
        self._pkt_faults = any(cfg.faults.get(k) > 0 for k in F.PACKET_FAULTS)
        self.day = 0

    def _rng(self, stream: int, veh: int, day: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, stream, veh, day])

    def begin_day(self, day: int) -> list[tuple]:
        """Every device's itinerary for the day, then all the day's drives planned in one
        vectorised pass (plan_drives_many; each device's draws from its own model stream,
        so the drives are those a device-by-device plan makes): [(model rng, Drives|None)]
        for device_day."""
        day_t0 = self.cfg.start_s + day * DAY_S
        pre, jobs, who = [], [], []
        for vi in range(len(self.fleet.vehicles)):
            mrng = self._rng(_MODEL, vi, day)
            job = self.planners[vi].begin(mrng, day_t0, self.states[vi])
            pre.append([mrng, None])
            if job is not None:
                jobs.append(job)
                who.append(vi)
        if jobs:
            for vi, dr in zip(who, plan_drives_many(jobs)):
                pre[vi][1] = dr
        return pre

    def model_day(self, vi: int, day: int, pre: tuple | None = None) -> DayRecords:
        """One device's records for one simulated day. `pre`: its (model rng, Drives)
        from begin_day, else planned here."""
        cfg, state = self.cfg, self.states[vi]
        if pre is None:
            mrng = self._rng(_MODEL, vi, day)
            track = self.planners[vi].plan(mrng, cfg.start_s + day * DAY_S, state)
        else:
            mrng, dr = pre
            track = self.planners[vi].complete(mrng, state, dr)
        return self._cut(day, self.factories[vi].build(mrng, track, state))

    def model_days(self, day: int, pre: list[tuple]) -> list[DayRecords]:
        """model_day for every device, from begin_day's plans: the timelines device by
        device, then the records of all of them in one vectorised build (build_many)."""
        jobs = []
        for vi, (mrng, dr) in enumerate(pre):
            state = self.states[vi]
            jobs.append((self.factories[vi], mrng, self.planners[vi].complete(mrng, state, dr), state))
        # A factory whose build() was replaced on the instance (a test's spy) builds its
        # own device-days; the others go through one build_many.
        own = [k for k, j in enumerate(jobs) if "build" in vars(j[0])]
        if not own:
            return [self._cut(day, d) for d in build_many(jobs)]
        rest = [k for k in range(len(jobs)) if k not in own]
        out: list = [None] * len(jobs)
        for k, d in zip(rest, build_many([jobs[k] for k in rest])):
            out[k] = d
        for k in own:
            f, mrng, tr, state = jobs[k]
            out[k] = f.build(mrng, tr, state)
        return [self._cut(day, d) for d in out]

    def _cut(self, day: int, day_recs: DayRecords) -> DayRecords:
        cfg = self.cfg
        if day == cfg.days - 1 and day_recs.ms and day_recs.ms[-1] >= cfg.end_ms:
            day_recs = day_recs.head(bisect.bisect_left(day_recs.ms, cfg.end_ms))  # ms increase
        self.model_records += len(day_recs)
        return day_recs

    def device_day(self, vi: int, day: int, pre: tuple | None = None, day_recs: DayRecords | None = None,
                   enc: tuple | None = None) -> list[Emission]:
        """One device's emissions for one simulated day (unordered across devices).
        `day_recs` and `enc` (its (blob, offsets, base) from encode_days): the day's
        records and their bytes when the caller made them (emissions() does, for all
        devices at once), else made here."""
        cfg, veh = self.cfg, self.fleet.vehicles[vi]
        link = self.links[vi]
        nrng = self._rng(_NET, vi, day)
        # The fault stream is drawn from only when some fault has a rate (seeding costs ~17 µs).
        frng = self._rng(_FAULT, vi, day) if self._rec_faults or self._pkt_faults else None
        if day_recs is None:
            day_recs = self.model_day(vi, day, pre)
            enc = encode_days([day_recs])[0]
        rates = cfg.faults
        span = cfg.end_ms - cfg.start_ms
        ms_all, has_all = day_recs.ms, day_recs.has_card
        rows_at = day_recs.rows_range
        lay_p, lay_c = day_recs.lay_plain, day_recs.lay_card
        size_p, size_c = lay_p.size, lay_c.size
        if day_recs.n:  # the numpy columns (timestamps, ignition) of the day's records
            cols = day_recs.np_cols
            groups = send_groups(veh, cols[0][:day_recs.n], cols[9 + (veh.codec == CODEC_16)][:day_recs.n])
        else:
            groups = []
        # every record's bytes at once (numpy), sliced per packet
        blob, off, base = enc if enc is not None else (None, None, 0)
        # Draws in bulk (one array per device-day): uniforms for the fault decisions,
        # latencies and in-send spacing from the network stream.
        n_max = len(day_recs) + 2 * len(groups) + 8
        u_rec = frng.random(len(groups)).tolist() if self._rec_faults else None
        u_pkt = frng.random(n_max).tolist() if self._pkt_faults else None
        lat = latency_array(nrng, len(groups))
        gaps = nrng.integers(3, 43, n_max).tolist()
        out: list[Emission] = []
        ooo: list[int] = []
        k = 0
        max_record = self.max_record[vi]
        lo, hi = self._lo, self._hi
        imei, transport = veh.imei, veh.transport
        pick = rates.pick
        # pick() is None for a draw at or above the kinds' summed rate (most draws).
        rec_top, pkt_top = rates.top(F.RECORD_FAULTS), rates.top(F.PACKET_FAULTS)
        codec, udp, max_packet = veh.codec, transport == "udp", veh.max_packet
        # Up to this many records, a send is one packet whatever its layouts (chunk()).
        one_max = min(255, (max_packet - (UDP_OVERHEAD if udp else TCP_OVERHEAD)) // max_record)

        def resolve(pk):
            """A packet's (rows, layouts): slices of the day are made into rows here."""
            rows, lays = pk[0], pk[1]
            if type(rows) is slice:
                if lays is None:
                    hs = has_all[rows]
                    lays = (lay_c if all(hs) else [lay_c if h else lay_p for h in hs]) if any(hs) else lay_p
                rows = rows_at(rows.start, rows.stop)
            return rows, lays

        for gi, (tick, a, b) in enumerate(groups):
            rfault = pick(u_rec[gi], F.RECORD_FAULTS) if u_rec is not None and u_rec[gi] < rec_top else None
            nb = b - a
            if not rfault and nb <= one_max:
                # The common case, as the general path below makes it: the day's own
                # records in one packet, its bytes a slice of the day's; the packet's
                # records stay slice(a, b) and its layouts None until needed (resolve).
                if udp:
                    pid, apid = link.next_udp_ids()
                    frame = frame_records(codec, nb, blob[off[base + a]:off[base + b]], "udp", imei, pid, apid, 1)
                else:
                    pid = apid = None
                    frame = frame_records(codec, nb, blob[off[base + a]:off[base + b]])
                if len(frame) > max_packet and nb > 1:
                    raise AssertionError("a record is larger than its layout size")
                fates = {"valid": nb} if ms_all[a] >= lo and ms_all[b - 1] <= hi else self._fates_of(ms_all[a:b])
                em = Emission(tick * 1000 + lat[gi], (vi, link.seq), imei, transport, frame,
                              (slice(a, b), None, pid, apid), fates, None, "original", vi, nb, apid)
                link.seq += 1
                u = u_pkt[k % n_max] if u_pkt is not None else 1.0
                k += 1
                if u < pkt_top and (pfault := pick(u, F.PACKET_FAULTS)) is not None:
                    out += self._packet_fault(pfault, em, (), frng, link, ooo, len(out), resolve)
                else:
                    out.append(em)
                continue
            has = has_all[a:b]
            if rfault:
                rows, ms = rows_at(a, b), ms_all[a:b]
            if rfault == "backlog":
                extra, src = F.backlog_rows(frng, rows, span)
                rows, has, ms = extra + rows, [has[j] for j in src] + has, [r[0] for r in extra] + ms
            elif rfault == "future":
                extra, src = F.future_rows(frng, rows, span)
                rows, has, ms = rows + extra, has + [has[j] for j in src], ms + [r[0] for r in extra]
            t_ms = tick * 1000 + lat[gi]
            for ca, cb in chunk(veh, has, size_p, size_c, max_record):
                hs = has[ca:cb]
                lays = (lay_c if all(hs) else [lay_c if h else lay_p for h in hs]) if any(hs) else lay_p
                if not rfault:  # the day's own records: a slice of its bytes
                    # prows is slice(first, end) into the day until the rows are needed
                    packets = encode_checked_bytes(veh, link, blob[off[base + a + ca]:off[base + a + cb]],
                                                   a + ca, a + cb, rows_at, lays)
                else:
                    packets = encode_checked(veh, link, rows[ca:cb], lays)
                for prows, plays, pid, apid, frame in packets:
                    if rfault:
                        n = len(prows)
                        pms = [r[0] for r in prows]
                        tags = (rfault,) if self._has_shifted(pms) else ()
                        t0, t1 = pms[0], pms[-1]
                    else:
                        if type(prows) is slice:
                            i0, i1 = prows.start, prows.stop
                        else:  # split by encode_checked_bytes (never expected)
                            i0 = bisect.bisect_left(ms_all, prows[0][0])
                            i1 = i0 + len(prows)
                        n = i1 - i0
                        pms, tags = None, ()
                        t0, t1 = ms_all[i0], ms_all[i1 - 1]
                    fates = {"valid": n} if t0 >= lo and t1 <= hi else self._fates_of(pms or ms_all[i0:i1])
                    em = Emission(t_ms, (vi, link.seq), imei, transport, frame,
                                  (prows, plays, pid, apid), fates, None, "original", vi, n, apid)
                    link.seq += 1
                    t_ms += gaps[k % n_max]
                    u = u_pkt[k % n_max] if u_pkt is not None else 1.0
                    pfault = pick(u, F.PACKET_FAULTS) if u < pkt_top else None
                    k += 1
                    if pfault is None and not tags:
                        out.append(em)
                    else:
                        out += self._packet_fault(pfault, em, tags, frng, link, ooo, len(out), resolve)
        for i in ooo:  # deliver after the device's next original packet
            nxt = next((e.received_at for e in out[i + 1:] if e.copy == "original"), None)
            out[i].received_at = (nxt if nxt is not None else out[i].received_at + 60_000) + int(frng.integers(1, 500))
        # During the day `packet` held (rows, layouts, packet id, AVL packet id[, imei]);
        # the AvlPacket is made only if the caller keeps packets (tests).
        if self.keep_packets:
            made: dict[int, AvlPacket] = {}
            for e in out:
                pk = e.packet
                p = made.get(id(pk))
                if p is None:
                    rows, lays = resolve(pk)
                    p = made[id(pk)] = make_packet(veh, rows, lays, pk[2], pk[3], e.imei if e.device < 0 else None)
                e.packet = p
        else:
            for e in out:
                e.packet = None
        return out

    def _fates_of(self, ms: list[int]) -> dict[str, int]:
        lo, hi = self._lo, self._hi
        old = fut = 0
        for t in ms:
            if t < lo:
                old += 1
            elif t > hi:
                fut += 1
        out = {"valid": len(ms) - old - fut}
        if old:
            out["too_old"] = old
        if fut:
            out["future"] = fut
        return out

    def _has_shifted(self, ms: list[int]) -> bool:
        cfg = self.cfg
        lo, hi = cfg.start_ms, cfg.end_ms + DAY_MS
        return any(not lo <= t < hi for t in ms)

    def _packet_fault(self, pfault, em: Emission, tags, frng, link: DeviceLink, ooo: list[int],
                      pos: int, resolve=None) -> list[Emission]:
        em.fault = ",".join(tags) or None
        n = em.n_records
        if pfault is None:
            return [em]
        if pfault in F.CORRUPTING:
            bad = Emission(em.received_at, em.order + ("c",), em.imei, em.transport,
                           F.corrupt(frng, pfault, em.frame, em.transport), em.packet,
                           {"corrupt": n}, ",".join(tags + (pfault,)), "corrupt", em.device, n,
                           em.avl_packet_id)
            em.received_at += F.resend_delay_ms(frng)
            em.copy = "resend"
            return [bad, em]
        if pfault == "duplicate":
            # A copy's too-old / future records keep those fates (a property of the
            # record, and what a retention gate sees first); only its valid ones are
            # duplicates.
            fates = dict(em.fates)
            fates["duplicate"] = fates.pop("valid", 0)
            dup = Emission(em.received_at + F.resend_delay_ms(frng), em.order + ("d",), em.imei,
                           em.transport, em.frame, em.packet, fates,
                           ",".join(tags + ("duplicate",)), "duplicate", em.device, n, em.avl_packet_id)
            return [em, dup]
        if pfault == "out_of_order":
            em.fault = ",".join(tags + ("out_of_order",))
            ooo.append(pos)
            return [em]
        if pfault == "unknown_imei":
            imeis = self.fleet.unknown_imeis
            imei = imeis[int(frng.integers(0, len(imeis)))]
            _, _, pid, apid = em.packet
            rows, lays = resolve(em.packet)
            pk = em.packet
            frame = em.frame
            if em.transport == "udp":  # the datagram carries the IMEI; TCP's frame is the same
                pk = (rows, lays, pid, apid, imei)
                frame = encode_rows(self.fleet.vehicles[em.device].codec, rows, lays, "udp", imei,
                                    pid, apid, 1)
            ph = Emission(em.received_at + int(frng.integers(1, 900)), em.order + ("u",), imei,
                          em.transport, frame, pk, {"unknown_device": n},
                          ",".join(tags + ("unknown_imei",)), "phantom", -1, n, apid)
            return [em, ph]
        raise ValueError(pfault)

    def emissions(self) -> Iterator[Emission]:
        """Every emission of the run, in received_at order.

        Each simulated day's emissions are sorted once (timsort over per-device runs that
        are already nearly in order); those arriving after midnight wait for the next day.
        The cyclic garbage collector is paused while generating: the simulator makes
        millions of small acyclic objects that reference counting frees, and the
        collector's passes over them cost ~10 % for nothing.
        """
        key = _arrival
        pending: list[Emission] = []
        n_veh = len(self.fleet.vehicles)
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for day in range(self.cfg.days):
                self.day = day
                pre = self.begin_day(day)
                days = self.model_days(day, pre)
                encs = encode_days(days)
                pre = None
                for vi in range(n_veh):
                    pending += self.device_day(vi, day, None, days[vi], encs[vi])
                days = encs = None
                pending.sort(key=key)
                horizon = self.cfg.start_ms + (day + 1) * DAY_MS
                cut = bisect.bisect_left(pending, (horizon,), key=key)
                ready, pending = pending[:cut], pending[cut:]
                yield from ready
                # Whatever cycles the sink made (asyncio futures) meanwhile; the day's
                # emissions are released first, so the pass walks only what survives.
                ready = None
                gc.collect(1)
            yield from pending
        finally:
            if was_enabled:
                gc.enable()


# An emission's arrival key, (received_at, order), at C speed.
_arrival = operator.attrgetter("received_at", "order")

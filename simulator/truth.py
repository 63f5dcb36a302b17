"""The ground-truth manifest: who is in the fleet and what happened to every record sent.

Fates (per record copy; every record copy that was delivered has exactly one):
  corrupt         inside a message that fleetcloak.codecs.decode rejects
  unknown_device  in a decodable message whose IMEI belongs to no tenant
  too_old         timestamp < reference.too_old_before_ms (= start - 365 days; the
                  generated ones are >= 400 days before start), every copy
  future          timestamp > reference.future_after_ms (= end + 365 days; the generated
                  ones are >= 366 days after the end), every copy
  duplicate       a decodable copy of an otherwise valid record (same IMEI, identical
                  record) that was already delivered earlier in the stream
  valid           every other record copy: the first decodable copy of a record with a
                  timestamp inside the window; it must reach its tenant's topic
Precedence is the order above. Device sinks (tcp://, udp://) add, for what the device
cannot know:
  unacked         a copy sent in an attempt that got no (or a short) ACK: the server
                  may or may not have stored it (if it did, it is a duplicate of the
                  acknowledged copy, or the first copy if none was acknowledged)
  rejected        records of a device whose login the server refused (never sent)
  undelivered     records of a packet that could not be sent at all (connection failed)
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from .engine import SimConfig
from .fleet import Fleet, square
from .packetiser import Emission

FATES = ("valid", "corrupt", "too_old", "future", "duplicate", "unknown_device")
DEVICE_FATES = ("unacked", "rejected", "undelivered")
ZONE_SIDE_M = 300.0
DEPOT_SIDE_M = 400.0
FORMAT = "fleetcloak-simulator-truth/1"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class Truth:
    def __init__(self, fleet: Fleet, cfg: SimConfig):
        self.fleet, self.cfg = fleet, cfg
        self._counts: dict[str, Counter] = defaultdict(Counter)
        self._messages: dict[str, Counter] = defaultdict(Counter)
        self.faults: Counter = Counter()
        self._totals: Counter = Counter()
        # The common message (an original, all records valid, no fault) is counted in
        # plain ints per IMEI, [records, messages], and bytes, folded into the Counters
        # when they are read.
        self._plain: dict[str, list[int]] = {}
        self._plain_bytes = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.interrupted = False

    def add(self, em: Emission, fates: dict[str, int]) -> None:
        """Count one delivered emission (`fates`: as planned, or as a device sink saw it)."""
        if em.fault is None and em.copy == "original" and len(fates) == 1:
            n = fates.get("valid")
            if n:
                p = self._plain.get(em.imei)
                if p is None:
                    p = self._plain[em.imei] = [0, 0]
                    self._counts[em.imei], self._messages[em.imei]  # IMEI order as first seen
                p[0] += n
                p[1] += 1
                self._plain_bytes += len(em.frame)
                if self.first_ms is None:
                    self.first_ms = em.received_at
                self.last_ms = em.received_at
                return
        c = self._counts[em.imei]
        totals = self._totals
        records = 0
        for f, n in fates.items():
            if n:
                c[f] += n
                totals[f] += n
                records += n
        self._messages[em.imei][em.copy] += 1
        totals["messages"] += 1
        if fates.get("corrupt"):
            totals["corrupt_messages"] += 1
        totals["records"] += records
        totals["bytes"] += len(em.frame)
        if em.fault:
            for tag in em.fault.split(","):
                self.faults[tag] += 1
        if self.first_ms is None:
            self.first_ms = em.received_at
        self.last_ms = em.received_at

    def _fold(self) -> None:
        if not self._plain:
            return
        counts, messages, totals = self._counts, self._messages, self._totals
        records = msgs = 0
        for imei, (n, m) in self._plain.items():
            counts[imei]["valid"] += n
            messages[imei]["original"] += m
            records += n
            msgs += m
        totals["valid"] += records
        totals["records"] += records
        totals["messages"] += msgs
        totals["bytes"] += self._plain_bytes
        self._plain, self._plain_bytes = {}, 0

    @property
    def counts(self) -> dict[str, Counter]:
        """Records by fate per IMEI."""
        self._fold()
        return self._counts

    @property
    def messages(self) -> dict[str, Counter]:
        """Messages by copy kind per IMEI."""
        self._fold()
        return self._messages

    @property
    def totals(self) -> Counter:
        self._fold()
        return self._totals

    def zones(self) -> dict[str, list[dict]]:
        """Privacy zones per tenant: a square around each driver's home and the depot."""
        out: dict[str, list[dict]] = {}
        for t in self.fleet.tenants:
            zs = [{"name": "depot", "kind": "depot", "driver": None,
                   "polygon": square(*t.depot, DEPOT_SIDE_M)}]
            for k, di in enumerate(t.drivers):
                d = self.fleet.drivers[di]
                zs.append({"name": f"home-{k + 1:02d}", "kind": "home", "driver": d.id,
                           "polygon": square(*d.home, ZONE_SIDE_M)})
            out[t.id] = zs
        return out

    def to_dict(self, extra: dict | None = None) -> dict:
        from .policies import PROFILES

        cfg, fl = self.cfg, self.fleet
        zones = self.zones()
        tenants = []
        for t in fl.tenants:
            devs = []
            for vi in t.vehicles:
                v = fl.vehicles[vi]
                drivers = [fl.drivers[v.primary].id] + ([fl.drivers[v.secondary].id] if v.secondary is not None else [])
                devs.append({"imei": v.imei, "model": v.model, "family": v.family, "codec": v.codec,
                             "transport": v.transport, "drivers": drivers,
                             "driver_io": 217 if v.family == "64x" else 78})
            prof = PROFILES[t.index % len(PROFILES)]
            policy = {"analytics": prof["analytics"], "retention_days": prof["retention_days"],
                      "location": prof["processor"]["location"],
                      "pseudonymise": prof["processor"].get("pseudonymise", "all")}
            tenants.append({"id": t.id, "city": t.city, "timezone": t.timezone,
                            "depot": list(t.depot), "devices": devs, "zones": zones[t.id],
                            "policy": policy})
        drivers = [{"id": d.id, "tenant": d.tenant, "home": list(d.home),
                    "tacho_card": d.tacho_card, "private_mode": d.private_mode,
                    "garage": d.garage} for d in fl.drivers]
        counts = {imei: {f: c.get(f, 0) for f in FATES + DEVICE_FATES if f in c or f in FATES}
                  for imei, c in sorted(self.counts.items())}
        owner = {fl.vehicles[vi].imei: t.id for t in fl.tenants for vi in t.vehicles}
        by_tenant: dict[str, Counter] = {t.id: Counter({f: 0 for f in FATES}) for t in fl.tenants}
        by_tenant[""] = Counter({f: 0 for f in FATES})
        for imei, c in self.counts.items():
            by_tenant[owner.get(imei, "")].update(c)
        out = {
            "format": FORMAT,
            "seed": cfg.seed,
            "start": iso(cfg.start_ms),
            "end": iso(cfg.end_ms),
            "start_ms": cfg.start_ms,
            "end_ms": cfg.end_ms,
            "reference": {
                "too_old_before_ms": cfg.too_old_before_ms,
                "future_after_ms": cfg.future_after_ms,
                "assumption": (
                    "fates assume the stream is processed at a wall-clock time P with "
                    "end <= P < start + retention (365 days by default, or the tenant's "
                    "shorter retention_days): then every valid record is inside the "
                    "retention window and not in the future, every too_old record is "
                    "older than 12 months and every future record is at least a day ahead"),
                "valid_if_processed_between": [iso(cfg.end_ms), iso(cfg.start_ms + 365 * 86_400_000)],
            },
            "tenants": tenants,
            "drivers": drivers,
            "unknown_devices": list(fl.unknown_imeis),
            "counts": counts,
            "counts_by_tenant": {t: dict(c) for t, c in by_tenant.items()},
            "messages": {imei: dict(sorted(c.items())) for imei, c in sorted(self.messages.items())},
            "faults": {"rates": cfg.faults.as_dict(), "messages": dict(sorted(self.faults.items()))},
            "totals": {k: self.totals.get(k, 0) for k in ("messages", "corrupt_messages", "records", "bytes",
                                                           *FATES, *DEVICE_FATES)},
            "first_received_at": self.first_ms,
            "last_received_at": self.last_ms,
            "interrupted": self.interrupted,
        }
        if extra:
            out.update(extra)
        return out

    def write(self, path: str | Path, extra: dict | None = None) -> None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(extra), indent=1, sort_keys=False) + "\n")
        tmp.replace(p)

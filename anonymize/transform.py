"""The pure, vectorised "apply policy" layer the streams worker calls.

Build once per policy (and again when a policy changes), call per batch:

    proc = ProcessorTransform(tenant_policy, keyring)
    ctrl = ControllerTransform(service_policy, keyring, tenant_policy, gate=shared_gate)
    cols = Columns(imei=..., timestamp_ms=..., lat=..., lon=..., speed=..., angle=...,
                   altitude=..., satellites=..., io={io_id: column, ...},
                   family=..., content=raw_record_bytes)
    p = proc.apply(cols)          # ProcessorResult: every record, anonymised per policy
    c = ctrl.apply(cols)          # ControllerResult: c.keep says which records go out
    msgs = p.records(raw_io)      # list of JSON-ready dicts (raw_io: per-record {id: value})

`Columns` holds ONE tenant's records (the worker groups a batch by tenant with the
device registry first). Which IO columns to pass: `proc.io_ids_needed(families)` (the
identifying ids, 391, the cell ids). Columns may be uint64 (0 = absent) or object
arrays (None = absent; NX as bytes or lowercase hex).

Nothing here does I/O except through the Keyring's KeyStore (creating a root secret or a
subject salt on first use). No Kafka.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..codecs.iodict import CELL_IDS, identifier_groups
from .canonical import canonical_group, display_canonical
from .coarsen import bucket, grid_cells, h3_cells, h3_centres, h3_strings, round_to, snap_to_grid, truncate_time
from .keys import Keyring
from .policy import TenantPolicy
from .private_mode import PRIVATE_MODE_IO, private_mask
from .pseudonyms import Pseudonymizer, unique_objects
from .record_id import RecordIds, pack_columns
from .service_policy import SERVICE_IO_FIELDS, ServicePolicy
from .zones import ZoneIndex

OMIT = object()  # an io replacement meaning "leave this IO element out"
KEEP = object()  # an io replacement meaning "keep the record's own value"

# location_suppressed values
PRIVACY_ZONE = "privacy_zone"
PRIVATE_MODE = "private_mode"
BY_POLICY = "policy"
MIN_GROUP = "min_group_size"


@dataclass
class Columns:
    """One tenant's records as columns (one entry per record)."""

    imei: np.ndarray                      # str (U15/object) or integer
    timestamp_ms: np.ndarray              # int64, UTC
    lat: np.ndarray                       # float64 degrees (NaN = no position)
    lon: np.ndarray
    altitude: np.ndarray | None = None
    angle: np.ndarray | None = None
    speed: np.ndarray | None = None
    satellites: np.ndarray | None = None
    priority: np.ndarray | None = None
    event_io_id: np.ndarray | None = None
    io: Mapping[int, np.ndarray] = field(default_factory=dict)
    family: str | np.ndarray = "FMB"      # one family for the batch, or one per record
    content: Sequence[bytes] | None = None  # raw AVL record bytes, for record_id

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    def take(self, idx: np.ndarray) -> "Columns":
        """The same columns for rows `idx` only (integer indices, in that order)."""
        def pick(col):
            return None if col is None else np.asarray(col)[idx]

        fam = self.family if isinstance(self.family, str) else np.asarray(self.family)[idx]
        return Columns(
            imei=np.asarray(self.imei)[idx], timestamp_ms=pick(self.timestamp_ms), lat=pick(self.lat),
            lon=pick(self.lon), altitude=pick(self.altitude), angle=pick(self.angle), speed=pick(self.speed),
            satellites=pick(self.satellites), priority=pick(self.priority), event_io_id=pick(self.event_io_id),
            io={k: np.asarray(v)[idx] for k, v in self.io.items()}, family=fam,
            # a RecordContents (record_contents(batch)) picks rows without copying bytes
            content=None if self.content is None else self.content.take(idx) if hasattr(self.content, "take")
            else [self.content[i] for i in np.asarray(idx).tolist()],
        )

    def known_codes(self, imei_codes: tuple[np.ndarray, np.ndarray] | None = None,
                    family_rows: list[tuple[str, np.ndarray]] | None = None) -> "Columns":
        """Hands over what a caller already knows of these columns (the stream pipeline
        codes IMEIs and families once per packet, not per record): `imei_codes` as
        imei_codes() returns it (every distinct IMEI present in these rows, index into
        them per record), `family_rows` as family_rows() yields it (families in sorted
        order, each with its rows). They must describe these very columns; returns self."""
        if imei_codes is not None:
            self.__dict__["_imei_codes"] = (self.imei, imei_codes)
        if family_rows is not None and not isinstance(self.family, str):
            self.__dict__["_family_rows"] = (self.family, family_rows)
        return self

    def family_rows(self) -> Iterable[tuple[str, np.ndarray | None]]:
        """(family, row indexes or None for all rows)."""
        if isinstance(self.family, str):
            yield self.family, None
            return
        cached = self.__dict__.get("_family_rows")
        if cached is None or cached[0] is not self.family:
            fam = np.asarray(self.family)
            if fam.dtype == object:  # group by a dict pass, not an object sort
                uniq, inv = unique_objects(fam)
                order = sorted(range(len(uniq)), key=lambda i: uniq[i])
                groups = [(uniq[i], np.flatnonzero(inv == i)) for i in order]
            else:
                groups = [(f, np.flatnonzero(fam == f)) for f in np.unique(fam).tolist()]
            cached = self.__dict__["_family_rows"] = (self.family, groups)
        yield from cached[1]

    def imei_codes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(distinct IMEIs, index into them per record) of an object IMEI column, by one
        dict pass kept with these columns (both routes' pseudonyms and record ids use
        it); None for other columns."""
        arr = np.asarray(self.imei)
        if arr.dtype != object:
            return None
        cached = self.__dict__.get("_imei_codes")
        if cached is None or cached[0] is not self.imei:
            cached = self.__dict__["_imei_codes"] = (self.imei, unique_objects(arr))
        return cached[1]

    def memo(self, key: tuple, compute):
        """compute() once per key for these columns: what both routes derive alike from
        the same records (an identifier group's canonical forms, its distinct values),
        the controller route reusing the processor's when it gets the same Columns."""
        memo = self.__dict__.setdefault("_memo", {})
        got = memo.get(key)
        if got is None:
            got = memo[key] = compute()
        return got

    def record_content(self) -> Sequence[bytes]:
        if self.content is not None:
            return self.content
        return pack_columns(
            self.timestamp_ms, self.lat, self.lon, priority=self.priority, altitude=self.altitude,
            angle=self.angle, satellites=self.satellites, speed=self.speed,
            event_io_id=self.event_io_id, io=self.io,
        )


def _take(col: np.ndarray | None, idx: np.ndarray | None):
    if col is None or idx is None:
        return col
    return np.asarray(col)[idx]


@dataclass
class Identifiers:
    """What the identifier pass found: per-record driver, io replacements."""

    driver: np.ndarray                       # object: pseudonym / kept id / None
    replace: dict[int, np.ndarray]           # io id -> object column (value, or OMIT)
    erased: np.ndarray                       # bool: a subject of this record was erased
    multipart: dict[int, tuple[int, ...]] = field(default_factory=dict)  # first id -> all ids


def _identifiers(cols: Columns, pseudo: Pseudonymizer, pseudonymise: frozenset[str], on_erased: str, want_io: bool,
                 only: frozenset[str] | None = None) -> Identifiers:
    n = len(cols)
    ts = np.asarray(cols.timestamp_ms)
    driver = np.full(n, None, dtype=object)
    erased = np.zeros(n, dtype=bool)
    replace: dict[int, np.ndarray] = {}
    multipart: dict[int, tuple[int, ...]] = {}
    for fam, rows in cols.family_rows():
        sub_ts = ts if rows is None else ts[rows]
        m = sub_ts.shape[0]
        fam_driver = np.full(m, None, dtype=object)
        for group in identifier_groups(fam):
            if only is not None and group.kind not in only:
                continue
            colset = [cols.io.get(i) for i in group.ids]
            if all(c is None for c in colset):
                continue
            if group.kind == "driver" and not want_io and fam_driver.astype(bool).all():
                continue
            parts = [(_take(c, rows) if c is not None else None) for c in colset]
            hide = group.kind in pseudonymise
            first = parts[0]
            if group.canonical == "raw8" and first is not None and np.asarray(first).dtype.kind in "iu":
                vals = np.asarray(first).astype(np.uint64, copy=False)
                if hide:
                    codes = cols.memo(("distinct", fam, group.ids), lambda: np.unique(vals, return_inverse=True))
                    out = pseudo.u64(group.kind, vals, sub_ts, on_erased=on_erased, codes=codes)
                    present = vals != 0
                else:
                    uniq, inv = np.unique(vals, return_inverse=True)
                    shown = np.empty(len(uniq), dtype=object)
                    shown[:] = [display_canonical(group, int(u).to_bytes(8, "big")) if u else 0 for u in uniq.tolist()]
                    out = shown[inv]
                    present = vals != 0
            else:
                canon, inv = cols.memo(("canonicals", fam, group.ids), lambda: _group_canonicals(group, fam, parts, m))
                if hide:
                    # one pseudonym per distinct canonical and epoch (epochs are per record)
                    out = pseudo.canonicals_indexed(group.kind, canon, inv, sub_ts, on_erased=on_erased)
                else:
                    shown = np.empty(len(canon), dtype=object)
                    shown[:] = [display_canonical(group, c) if c is not None else None for c in canon]
                    out = shown[inv]
                present = np.fromiter((c is not None for c in canon), dtype=bool, count=len(canon))[inv]
            if hide:
                # an erased subject's value comes back None while present
                gone = present & np.equal(out, None)
                if gone.any():
                    erased_rows = np.flatnonzero(gone)
                    erased[erased_rows if rows is None else rows[erased_rows]] = True
            if group.kind == "driver":
                take = present & np.equal(fam_driver, None)
                fam_driver[take] = out[take]
            if want_io and hide:
                # keep a zero iButton as 0; absent multi-part values stay as they were
                col0 = np.where(present, out, np.asarray(first, dtype=object) if first is not None else None)
                _put(replace, group.ids[0], col0, rows, n)
                if len(group.ids) > 1:
                    multipart[group.ids[0]] = group.ids
                for other in group.ids[1:]:
                    omit = np.full(m, OMIT, dtype=object)
                    _put(replace, other, omit, rows, n)
        if rows is None:
            driver = fam_driver
        else:
            driver[rows] = fam_driver
    return Identifiers(driver, replace, erased, multipart)


def _live_rows(parts: list, m: int) -> np.ndarray | None:
    """Rows where any part may hold a value (not None, not 0), or None when that is not
    known cheaply (a part neither object nor integer). The other rows' canonical form is
    None whatever the group's form: every canonical form of all-absent parts is None."""
    live = None
    for p in parts:
        if p is None:
            continue
        a = np.asarray(p)
        if a.dtype == object:
            nz = np.not_equal(a, None)
        elif a.dtype.kind in "iu":
            nz = a != 0
        else:
            return None
        live = nz if live is None else live | nz
    return np.flatnonzero(live) if live is not None else np.zeros(0, dtype=np.intp)


def _group_canonicals(group, fam: str, parts: list, m: int) -> tuple[list, np.ndarray]:
    """(distinct canonicals, index into them per row) of an identifier group given as
    per-row parts. Distinct values (tuples of the parts) by a dict pass over the rows
    that carry a value only; the rest share one None entry."""
    live = _live_rows(parts, m)
    if live is None or live.shape[0] == m:
        lists = [(np.asarray(p).tolist() if p is not None else [None] * m) for p in parts]
        off = 0
        inv = None
    else:
        k = live.shape[0]
        lists = [(np.asarray(p)[live].tolist() if p is not None else [None] * k) for p in parts]
        off = 1
    # tuples built only per distinct value when the group has one part
    rowvals = lists[0] if len(lists) == 1 else list(zip(*lists))
    index = {v: i for i, v in enumerate(dict.fromkeys(rowvals), off)}
    sub_inv = np.fromiter(map(index.__getitem__, rowvals), dtype=np.intp, count=len(rowvals))
    if off:
        inv = np.zeros(m, dtype=np.intp)
        inv[live] = sub_inv
    else:
        inv = sub_inv
    uniq_l = [(v,) for v in index] if len(lists) == 1 else list(index)
    canon = [None] * off + [canonical_group(group, t, fam) for t in uniq_l]
    return canon, inv


def _put(replace: dict[int, np.ndarray], io_id: int, values: np.ndarray, rows: np.ndarray | None, n: int) -> None:
    if rows is None:
        replace[io_id] = values
        return
    col = replace.get(io_id)
    if col is None:
        col = replace[io_id] = np.full(n, KEEP, dtype=object)
    col[rows] = values


# --- processor route -------------------------------------------------------------
@dataclass
class ProcessorResult:
    """Every record of the batch, anonymised for the tenant's own topic.

    Numeric columns are float64 with NaN for null (None when the policy drops the field
    altogether). `io_replace[id][i]` replaces record i's value of IO `id` (OMIT: leave
    it out; KEEP: keep the record's own value); `io_keep(id)` is the tenant's IO filter; `strip_io[i]` marks records whose
    cell ids (iodict.CELL_IDS) are removed.
    """

    tenant: str
    record_id: np.ndarray
    device: np.ndarray
    driver: np.ndarray
    timestamp_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    altitude: np.ndarray | None
    angle: np.ndarray | None
    speed: np.ndarray | None
    satellites: np.ndarray | None
    private: np.ndarray
    location_suppressed: np.ndarray
    io_replace: dict[int, np.ndarray]
    strip_io: np.ndarray
    io_filter: object
    io_multipart: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # for the controller route of the same records (ControllerTransform.apply hints):
    private_raw: np.ndarray | None = None   # private_mask of each record
    zone: np.ndarray | None = None           # zone index of each raw position (-1: none)

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    def io_keep(self, io_id: int) -> bool:
        return self.io_filter.passes(io_id)

    def record_io(self, i: int, raw_io: Mapping[int, object]) -> dict[str, object]:
        """Record i's IO dict for output: filtered, identifiers replaced, NX as hex."""
        out: dict[str, object] = {}
        strip = bool(self.strip_io[i])
        for io_id, v in raw_io.items():
            io_id = int(io_id)
            if not self.io_filter.passes(io_id) or (strip and io_id in CELL_IDS):
                continue
            rep = self.io_replace.get(io_id)
            if rep is not None:
                r = rep[i]
                if r is OMIT:
                    continue
                if r is not KEEP:
                    v = r
            if isinstance(v, (bytes, bytearray)):
                v = bytes(v).hex()
            out[str(io_id)] = v
        # a multi-part identifier whose first part is missing from this record: its
        # pseudonym still goes out under the first id (the other parts are left out)
        for first, ids in self.io_multipart.items():
            key = str(first)
            if key in out or first in raw_io or not self.io_filter.passes(first):
                continue
            if any(m in raw_io or str(m) in raw_io for m in ids[1:]):
                v = self.io_replace[first][i]
                if isinstance(v, str):
                    out[key] = v
        return out

    def records(self, raw_io: Sequence[Mapping[int, object]] | None = None, *,
                rows: np.ndarray | None = None, io: Sequence[dict] | None = None) -> list[dict]:
        """JSON-ready dicts (the processor output contract), one per record.

        rows: only these records (indexes), in this order. io: their finished IO dicts
        (one per chosen record, added under "io"), instead of raw_io."""
        def pick(col):
            return col if rows is None else np.asarray(col)[rows]

        n = len(self) if rows is None else len(rows)
        cols = {
            "record_id": pick(self.record_id).tolist(),
            "tenant": [self.tenant] * n,
            "device": pick(self.device).tolist(),
            "driver": pick(self.driver).tolist(),
            "timestamp_ms": np.asarray(pick(self.timestamp_ms)).tolist(),
            "lat": _nullable(pick(self.lat), float),
            "lon": _nullable(pick(self.lon), float),
        }
        for name in ("altitude", "angle", "speed", "satellites"):
            col = getattr(self, name)
            if col is not None:
                cols[name] = _nullable(pick(col), int)
        cols["private"] = pick(self.private).tolist()
        cols["location_suppressed"] = pick(self.location_suppressed).tolist()
        if io is not None:
            cols["io"] = list(io)
        out = dicts_from_columns(list(cols), list(cols.values()))
        if raw_io is not None and io is None:
            idx = range(len(self)) if rows is None else np.asarray(rows).tolist()
            for i, rec, rio in zip(idx, out, raw_io):
                rec["io"] = self.record_io(i, rio)
        return out


def _nullable(col: np.ndarray, typ) -> list:
    """A float column as a list of Python numbers (int or float), None for NaN; numpy
    does the conversion, Python only touches the NaN rows."""
    arr = np.asarray(col, dtype=np.float64)
    nan = np.isnan(arr)
    if typ is int:
        vals = arr.astype(np.int64) if not nan.any() else np.where(nan, 0, arr).astype(np.int64)
    else:
        vals = arr
    if not nan.any():
        return vals.tolist()
    out = vals.astype(object)
    out[nan] = None
    return out.tolist()


_MAKERS: dict[tuple[str, ...], object] = {}


def dicts_from_columns(names: Sequence[str], cols: Sequence[list]) -> list[dict]:
    """One dict per row from equal-length column lists, keys in `names` order (what
    `dict(zip(names, row))` gives, built by a dict display compiled once per name
    tuple: about half the per-row cost)."""
    names = tuple(names)
    if not all(type(n) is str for n in names):
        raise TypeError("field names are str")
    if not names:
        return [{} for _ in range(len(cols[0]) if cols else 0)]
    make = _MAKERS.get(names)
    if make is None:
        vs = [f"v{i}" for i in range(len(names))]
        body = ", ".join(f"{n!r}: {v}" for n, v in zip(names, vs))
        src = f"def make(cols):\n    return [{{{body}}} for {', '.join(vs)}, in zip(*cols)]\n"
        ns: dict = {}
        exec(compile(src, "<dicts_from_columns>", "exec"), ns)  # names are field names, repr-quoted
        make = _MAKERS[names] = ns["make"]
    return make(cols)


class ProcessorTransform:
    """The tenant's processor route: pseudonymise per policy, zones, private mode,
    precision, IO filter. Build once per policy; `apply` per batch."""

    def __init__(self, policy: TenantPolicy, keyring: Keyring):
        self.policy = policy
        self.proc = policy.processor
        self.keyring = keyring
        self.pseudo = Pseudonymizer(keyring, tenant=policy.tenant, route="processor", rotation=policy.pseudonym_rotation)
        self.ids = RecordIds(keyring, tenant=policy.tenant, route="processor", rotation=policy.pseudonym_rotation)
        self.zones = ZoneIndex.from_policy(self.proc.privacy_zones)
        self.pseudonymise = frozenset(self.proc.pseudonymise)
        self.strip = frozenset(self.proc.private_mode.strip)
        self.drop = frozenset(self.proc.drop_fields)

    def __repr__(self) -> str:
        return f"ProcessorTransform(tenant={self.policy.tenant!r}, zones={len(self.zones)})"

    def io_ids_needed(self, families: Iterable[str] = ("FMB",)) -> set[int]:
        """IO columns `apply` reads: identifiers, private mode (391)."""
        out = {PRIVATE_MODE_IO}
        for fam in families:
            out |= {i for g in identifier_groups(fam) for i in g.ids}
        return out

    def devices(self, cols: Columns) -> np.ndarray:
        if "device" in self.pseudonymise:
            return self.pseudo.imeis_coded(cols.imei, cols.timestamp_ms, distinct=cols.imei_codes())[0]
        arr = np.asarray(cols.imei)
        out = np.empty(arr.shape[0], dtype=object)
        out[:] = [f"{v:015d}" if isinstance(v, int) else str(v) for v in arr.tolist()]
        return out

    def locate(self, cols: Columns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lat, lon, location_suppressed) before private mode."""
        return self._locate(cols)[:3]

    def _locate(self, cols: Columns):
        """locate() and, 4th, the zone of each raw position (-1: none; None: not looked
        up), which the controller route of the same records can reuse."""
        n = len(cols)
        lat = np.asarray(cols.lat, dtype=np.float64)
        lon = np.asarray(cols.lon, dtype=np.float64)
        why = np.full(n, None, dtype=object)
        prec = self.proc.location.precision
        if prec == "none":
            why[:] = BY_POLICY
            return np.full(n, np.nan), np.full(n, np.nan), why, None
        zone = self.zones.locate(lat, lon) if len(self.zones) else None
        raw_zone = zone
        if prec == "grid":
            lat, lon = snap_to_grid(lat, lon, self.proc.location.grid_m)
            if zone is not None:  # the emitted cell centre must not lie in a zone either
                z2 = self.zones.locate(lat, lon)
                zone = np.where(zone >= 0, zone, z2)
        else:
            lat, lon = lat.copy(), lon.copy()
        if zone is not None:
            hit = zone >= 0
            if hit.any():
                lat[hit] = self.zones.replace_lat[zone[hit]]
                lon[hit] = self.zones.replace_lon[zone[hit]]
                why[hit] = PRIVACY_ZONE
        return lat, lon, why, (raw_zone if raw_zone is not None else np.full(n, -1, dtype=np.int32))

    def apply(self, cols: Columns) -> ProcessorResult:
        n = len(cols)
        ts = np.asarray(cols.timestamp_ms, dtype=np.int64)
        private = private_mask(ts, cols.io.get(PRIVATE_MODE_IO), self.proc.private_mode, self.policy.zoneinfo)
        lat, lon, why, raw_zone = self._locate(cols)
        any_private = bool(private.any())
        if any_private and "position" in self.strip:
            lat[private] = np.nan
            lon[private] = np.nan
            why[private] = PRIVATE_MODE
        fields = {}
        for name, dropname, stripname in (("altitude", "altitude", "altitude"), ("angle", "heading", "heading"), ("speed", "speed", "speed"), ("satellites", "satellites", None)):
            col = getattr(cols, name)
            if col is None or dropname in self.drop:
                fields[name] = None
                continue
            col = np.asarray(col, dtype=np.float64).copy()
            if any_private and stripname in self.strip:
                col[private] = np.nan
            fields[name] = col
        ident = _identifiers(cols, self.pseudo, self.pseudonymise, "raise", want_io=True)
        strip_io = private if "cell_ids" in self.strip else np.zeros(n, dtype=bool)
        return ProcessorResult(
            tenant=self.policy.tenant,
            record_id=self.ids.compute(cols.imei, ts, cols.record_content(), distinct=cols.imei_codes()),
            device=self.devices(cols),
            driver=ident.driver,
            timestamp_ms=ts,
            lat=lat,
            lon=lon,
            private=private,
            location_suppressed=why,
            io_replace=ident.replace,
            strip_io=strip_io,
            io_filter=self.proc.io,
            io_multipart=ident.multipart,
            private_raw=private,
            zone=raw_zone,
            **fields,
        )


# --- controller route ------------------------------------------------------------
class GroupGate:
    """Minimum group size (k) per (cell, time bucket), online.

    A record's position is released only when its (cell, bucket) has been seen with at
    least k distinct devices -- counting this batch and what this gate saw before. The
    first k-1 devices of a group get their records without a position; later ones get
    it. State is kept for the `horizon` most recent buckets; a record of an older bucket
    finds its group forgotten and is treated as a new group (so it is suppressed unless
    k distinct devices of it arrive together). With several workers each gate sees a
    subset of devices, so its count is a lower bound of the true one: conservative.
    Share one gate across tenants' ControllerTransforms in a worker.
    """

    def __init__(self, k: int, horizon: int = 4):
        self.k = k
        self.horizon = horizon
        self._groups: dict[int, dict[int, set]] = {}  # bucket -> cell -> devices seen (>= k: full)
        self._latest = None

    def admit(self, cells: np.ndarray, buckets: np.ndarray, devices: np.ndarray | None,
              device_codes: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """True for the rows whose (cell, bucket) group has >= k distinct devices.

        device_codes: (distinct devices, index into them per row) instead of `devices`,
        when the caller has them (the distinct values must be distinct, but may include
        some that no row uses)."""
        n = len(cells)
        if self.k <= 1 or n == 0:
            return np.ones(n, dtype=bool)
        cells = np.asarray(cells).astype(np.int64, copy=False)
        buckets = np.asarray(buckets, dtype=np.int64)
        if device_codes is None:
            dev_uniq, dev_inv = unique_objects(np.asarray(devices, dtype=object))
        else:
            dev_uniq, dev_inv = device_codes
            dev_inv = np.asarray(dev_inv, dtype=np.int64)
        # rows in (bucket, cell, device) order: a group is a run of equal (bucket, cell), its
        # distinct devices the runs of equal devices inside it (one sort, no unique())
        order = np.lexsort((dev_inv, cells, buckets))
        cs, bs, ds = cells[order], buckets[order], dev_inv[order]
        head = np.ones(n, dtype=bool)
        head[1:] = (cs[1:] != cs[:-1]) | (bs[1:] != bs[:-1])
        pair = head.copy()
        pair[1:] |= ds[1:] != ds[:-1]
        gid = np.empty(n, dtype=np.int64)
        gid[order] = np.cumsum(head) - 1
        heads, pairs = np.flatnonzero(head), np.flatnonzero(pair)
        bounds = np.searchsorted(pairs, heads).tolist() + [len(pairs)]  # each group's pairs
        pair_devs = np.asarray(dev_uniq, dtype=object)[ds[pairs]].tolist()
        groups, k = self._groups, self.k
        sizes = []
        for b, c, lo, hi in zip(bs[heads].tolist(), cs[heads].tolist(), bounds[:-1], bounds[1:]):
            by_cell = groups.get(b)
            if by_cell is None:
                by_cell = groups[b] = {}
            s = by_cell.get(c)
            if s is None:
                s = by_cell[c] = set(pair_devs[lo:hi])
            elif len(s) < k:  # a full group needs no more members
                s.update(pair_devs[lo:hi])
            sizes.append(len(s))
        ok = np.array(sizes, dtype=np.int64)[gid] >= k
        newest = int(buckets.max())
        if self._latest is None or newest > self._latest:
            self._latest = newest  # evict only when time moves on: whole buckets
            oldest = self._latest - self.horizon + 1
            for bucket in [bucket for bucket in groups if bucket < oldest]:
                del groups[bucket]
        return ok


@dataclass
class ControllerResult:
    """The batch on the analytics route. Only rows with keep=True are emitted.

    drops: {rule: count} for the rows with keep=False ("analytics_refused",
    "private_mode", "subject_erased"). lat/lon are cell centres (NaN when suppressed),
    cell the H3 cell (hex) or grid cell id, timestamp_ms truncated to the bucket.
    `fields` holds the allowlisted extras (name -> column).
    """

    tenant: str
    keep: np.ndarray
    drops: dict[str, int]
    record_id: np.ndarray
    device: np.ndarray
    driver: np.ndarray | None
    timestamp_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    cell: np.ndarray
    location_suppressed: np.ndarray
    fields: dict[str, np.ndarray]

    def records(self) -> list[dict]:
        idx = np.flatnonzero(self.keep)
        cols = {
            "record_id": self.record_id[idx].tolist(),
            "tenant": [self.tenant] * idx.size,
            "device": self.device[idx].tolist(),
            "driver": self.driver[idx].tolist() if self.driver is not None else [None] * idx.size,
            "timestamp_ms": self.timestamp_ms[idx].tolist(),
            "lat": _nullable(self.lat[idx], float),
            "lon": _nullable(self.lon[idx], float),
            "cell": self.cell[idx].tolist(),
            "location_suppressed": self.location_suppressed[idx].tolist(),
        }
        for name, col in self.fields.items():
            cols[name] = _nullable(np.asarray(col, dtype=np.float64)[idx], int)
        return dicts_from_columns(list(cols), list(cols.values()))


class ControllerTransform:
    """The service's analytics route for one tenant's records.

    Drops: the whole batch when the tenant refused analytics; private records; records
    of an erased subject. Then: service-key pseudonyms with per-subject salts, positions
    to H3/grid cell centres (suppressed in the tenant's privacy zones and below the
    minimum group size), time truncated to the bucket, speed bucketed, heading and
    altitude rounded, only allowlisted fields.
    """

    def __init__(self, service: ServicePolicy, keyring: Keyring, tenant: TenantPolicy, *, gate: GroupGate | None = None):
        self.service = service
        self.tenant = tenant
        self.keyring = keyring
        self.pseudo = Pseudonymizer(keyring, tenant=tenant.tenant, route="controller", rotation=service.pseudonym_rotation)
        self.ids = RecordIds(keyring, tenant=tenant.tenant, route="controller", rotation=service.pseudonym_rotation)
        self.zones = ZoneIndex.from_policy(tenant.processor.privacy_zones)
        self.gate = gate if gate is not None else GroupGate(service.min_group_size)
        self.allow = frozenset(service.allow)

    def __repr__(self) -> str:
        return f"ControllerTransform(tenant={self.tenant.tenant!r})"

    def cells(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(cell key int64, cell label object, centre lat, centre lon)."""
        loc = self.service.location
        if loc.grid_m is not None:
            clat, clon = snap_to_grid(lat, lon, loc.grid_m)
            ids = grid_cells(lat, lon, loc.grid_m)
            label = np.empty(ids.shape[0], dtype=object)
            g = int(loc.grid_m)
            label[:] = [None if c < 0 else f"g{g}:{c >> 32}:{c & 0xFFFFFFFF}" for c in ids.tolist()]
            return ids, label, np.where(ids >= 0, clat, np.nan), np.where(ids >= 0, clon, np.nan)
        cells = h3_cells(lat, lon, loc.h3_resolution)
        clat, clon = h3_centres(cells)
        return cells.astype(np.int64), h3_strings(cells), clat, clon

    def _cells(self, lat: np.ndarray, lon: np.ndarray):
        """`cells`, and the distinct cell keys' centres with an index into them per
        record (for one zone lookup per distinct cell). H3: one np.unique of the cells
        serves the centres, the labels and the zone lookup."""
        loc = self.service.location
        if loc.grid_m is not None:
            ids, label, clat, clon = self.cells(lat, lon)
            _, uidx, uinv = np.unique(ids, return_index=True, return_inverse=True)
            return ids, label, clat, clon, clat[uidx], clon[uidx], uinv.reshape(-1)
        cells = h3_cells(lat, lon, loc.h3_resolution)
        ucells, uinv = np.unique(cells, return_inverse=True)
        uinv = uinv.reshape(-1)
        ulat, ulon = h3_centres(ucells)
        labels = np.empty(ucells.shape[0], dtype=object)
        labels[:] = [format(c, "x") if c else None for c in ucells.tolist()]
        return cells.astype(np.int64), labels[uinv], ulat[uinv], ulon[uinv], ulat, ulon, uinv

    def apply(self, cols: Columns, *, private: np.ndarray | None = None,
              zone: np.ndarray | None = None, skip: np.ndarray | None = None) -> ControllerResult:
        """private, zone: what the tenant's ProcessorTransform already computed for the
        same records (ProcessorResult.private_raw / .zone, rows aligned with `cols`), so
        they are not computed twice; omitted, they are computed here.

        skip: rows left out quietly (bool per row): never kept, counted in no drop,
        admitted to no group. For the stream's duplicates (records a device sent again,
        whose first copy took this route): their identifiers are pseudonymised alongside
        the rest, so the controller shares the processor's work on the same Columns.
        Rows whose subjects may not take this route must be taken out of `cols` instead."""
        n = len(cols)
        ts = np.asarray(cols.timestamp_ms, dtype=np.int64)
        keep = np.ones(n, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
        drops: dict[str, int] = {}
        empty = np.full(n, None, dtype=object)
        if not self.tenant.analytics:
            drops["analytics_refused"] = int(keep.sum())
            return ControllerResult(self.tenant.tenant, np.zeros(n, bool), drops, empty, empty, None, ts,
                                    np.full(n, np.nan), np.full(n, np.nan), empty, empty, {})
        if private is None:
            private = private_mask(ts, cols.io.get(PRIVATE_MODE_IO), self.tenant.processor.private_mode, self.tenant.zoneinfo)
        private = private & keep
        if private.any():
            keep &= ~private
            drops["private_mode"] = int(private.sum())
        device, dev_uniq, dev_inv = self.pseudo.imeis_coded(cols.imei, ts, on_erased="none", distinct=cols.imei_codes())
        want_driver = "driver" in self.allow
        ident = _identifiers(cols, self.pseudo, frozenset({"driver"}), "none", want_io=False, only=frozenset({"driver"})) if want_driver else None
        erased = np.equal(device, None)
        if ident is not None:
            erased |= ident.erased
        erased &= keep
        if erased.any():
            keep &= ~erased
            drops["subject_erased"] = int(erased.sum())
        lat = np.asarray(cols.lat, dtype=np.float64)
        lon = np.asarray(cols.lon, dtype=np.float64)
        cell_key, cell, clat, clon, ulat, ulon, uinv = self._cells(lat, lon)
        why = np.full(n, None, dtype=object)
        nopos = np.isnan(clat)
        if len(self.zones):
            raw = zone if zone is not None else self.zones.locate(lat, lon)
            # cell centres: one lookup per distinct cell
            centre_in = self.zones.locate(ulat, ulon)[uinv] >= 0
            inz = (raw >= 0) | centre_in
            why[inz] = PRIVACY_ZONE
            nopos |= inz
        bucket_ms = self.service.time_bucket_s * 1000
        tsb = truncate_time(ts, self.service.time_bucket_s)
        cand = keep & ~nopos
        if cand.any():
            ok = self.gate.admit(cell_key[cand], tsb[cand] // bucket_ms, None, device_codes=(dev_uniq, dev_inv[cand]))
            small = np.flatnonzero(cand)[~ok]
            why[small] = MIN_GROUP
            nopos[small] = True
        clat = np.where(nopos, np.nan, clat)
        clon = np.where(nopos, np.nan, clon)
        cell = cell.copy()
        cell[nopos] = None
        fields: dict[str, np.ndarray] = {}
        if "speed" in self.allow and cols.speed is not None:
            fields["speed"] = bucket(np.asarray(cols.speed, dtype=np.float64), self.service.speed_bucket_kmh)
        if "heading" in self.allow and cols.angle is not None:
            fields["heading"] = np.mod(round_to(cols.angle, 45), 360)
        if "altitude" in self.allow and cols.altitude is not None:
            fields["altitude"] = round_to(cols.altitude, 100)
        if "satellites" in self.allow and cols.satellites is not None:
            fields["satellites"] = np.asarray(cols.satellites, dtype=np.float64)
        if "event_io_id" in self.allow and cols.event_io_id is not None:
            fields["event_io_id"] = np.asarray(cols.event_io_id, dtype=np.float64)
        for name, io_id in SERVICE_IO_FIELDS.items():
            if name in self.allow:
                col = cols.io.get(io_id)
                fields[name] = _numeric(col, n)
        return ControllerResult(
            tenant=self.tenant.tenant,
            keep=keep,
            drops=drops,
            record_id=self.ids.compute(cols.imei, ts, cols.record_content(), distinct=cols.imei_codes()),
            device=device,
            driver=ident.driver if ident is not None else None,
            timestamp_ms=tsb,
            lat=clat,
            lon=clon,
            cell=cell,
            location_suppressed=why,
            fields=fields,
        )


def _numeric(col, n: int) -> np.ndarray:
    if col is None:
        return np.full(n, np.nan)
    arr = np.asarray(col)
    if arr.dtype == object:
        return np.array([np.nan if v is None or isinstance(v, (bytes, str)) else float(v) for v in arr.tolist()])
    return arr.astype(np.float64)

"""From a device-day Track to AVL records: GNSS fields, noise, fix loss and IO values.

Vectorised over all the device-days of a simulated day (build_many, numpy; each device's
draws from its own stream): a device-day is numpy columns in row order, encoded at once
(encode_days); rows (int tuples, for encode_rows) and AvlRecord objects are made only on
demand (DayRecords).

GNSS (protocol notes 4.1): coordinates quantised to 1e-7 degrees exactly as the wire
holds them (so decode(encode(r)) == r); GPS noise ~2 m per axis on every fix; a record
without a fix has satellites 0, angle 0, speed 0 and the LAST fix's lat/lon/altitude
(forward-filled, across days too).

IO elements per family (ids are the FMB family's unless noted):
  239 ignition, 240 movement, 21 GSM signal (1-5), 69 GNSS status (1 fix / 2 no fix,
  FMB only: on 64x id 69 means something else), 24 speed km/h, 66 external voltage mV,
  67 battery voltage mV, 205/206 GSM cell id / area code (from a 1.5 km / 12 km grid),
  16 total odometer m, the driver key (FMB: 78 iButton; 64x: 217 RFID COM2) while the
  ignition is on (0 otherwise), the tachograph driver card as two 8-byte ASCII halves
  when the driver has one (FMB 147/148; 64x 195/196), 391 private mode on Codec 8E.
Event records name the IO that triggered them (event_io_id); periodic ones have 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..codecs.avl import IoWidths, encode_columns, record_from_row, row_layout
from ..codecs.packets import CODEC_8E, CODEC_16, AvlRecord
from .fleet import M_PER_DEG_LAT, Fleet, Vehicle
from .trips import EV_DRIVER, DeviceState, Track


class DriverTables:
    """Every driver's iButton value and card halves (dicts by driver index, and lists and
    arrays indexed by driver index where -1, no driver, hits the last entry): the same
    for every vehicle of a fleet, so made once and shared."""

    def __init__(self, fleet: Fleet):
        self.keys = {d.index: d.ibutton_int for d in fleet.drivers}
        self.cards = {
            d.index: (int.from_bytes(d.tacho_card[:8].encode(), "big"),
                      int.from_bytes(d.tacho_card[8:].encode(), "big"))
            for d in fleet.drivers if d.tacho_card
        }
        n_drv = len(fleet.drivers)
        self.key_at = [self.keys.get(i, 0) for i in range(n_drv)] + [0]
        self.card_at = [self.cards.get(i) for i in range(n_drv)] + [None]
        self.key_np = np.array(self.key_at, dtype=np.uint64)
        self.has_np = np.array([c is not None for c in self.card_at], dtype=bool)
        self.card_np = (np.array([c[0] if c else 0 for c in self.card_at], dtype=np.uint64),
                        np.array([c[1] if c else 0 for c in self.card_at], dtype=np.uint64))


class RecordFactory:
    def __init__(self, fleet: Fleet, veh: Vehicle, tables: DriverTables | None = None):
        self.veh = veh
        self.codec = veh.codec
        self.tenant = fleet.tenant(veh.tenant)
        fam = veh.family
        self.fam64 = fam == "64x"
        self.driver_io = 217 if self.fam64 else 78
        self.card_ios = (195, 196) if self.fam64 else (147, 148)
        self.has_private = self.codec == CODEC_8E
        # The ibutton value and card halves of each driver, by driver index (`tables`:
        # the fleet's, shared by its factories; made here if not given).
        t = tables if tables is not None else DriverTables(fleet)
        self.keys, self.cards = t.keys, t.cards
        self._key_at, self._card_at = t.key_at, t.card_at
        self._key_np, self._has_np, self._card_np = t.key_np, t.has_np, t.card_np
        self._cards_possible = any(i in self.cards for i in (veh.primary, veh.secondary) if i is not None)
        # io_width dicts are shared by every record of a layout (AvlRecord never mutates
        # them); they must list exactly the fixed-size ids present, as decode returns.
        # Key order = the column order in build().
        n1 = [239, 240, 21] + ([] if self.fam64 else [69]) + ([391] if self.has_private else [])
        n2 = [24, 66, 67, 205, 206]
        w = {i: 1 for i in n1} | {i: 2 for i in n2} | {16: 4, self.driver_io: 8}
        # Read-only IoWidths (what decode returns too): the encoder finds their layout by
        # identity instead of looking every id up per record.
        self.width_plain = IoWidths(w)
        self.width_card = IoWidths(w | {self.card_ios[0]: 8, self.card_ios[1]: 8})
        self.lay_plain = row_layout(self.codec, self.width_plain)
        self.lay_card = row_layout(self.codec, self.width_card)
        phase = self.tenant.road_theta * 1000.0
        self._terrain = (float(40 + 300 * (self.tenant.index % 3)), phase)

    def altitude(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        base, ph = self._terrain
        return np.rint(base + 35.0 * np.sin(x / 4100.0 + ph) + 22.0 * np.cos(y / 2700.0 - ph)).astype(np.int64)

    def build(self, rng: np.random.Generator, tr: Track, state: DeviceState) -> "DayRecords":
        return build_many([(self, rng, tr, state)])[0]

    def _day(self, np_cols: list, drv: np.ndarray, n: int) -> "DayRecords":
        """A device-day's DayRecords from its columns up to the IO values before the
        driver key (row order; see build_many), adding the key and card halves."""
        np_cols.append(self._key_np[drv])  # -1 (no driver) -> 0
        has_np = None
        if self._cards_possible:
            has_np = self._has_np[drv]
            if has_np.any():
                np_cols += [self._card_np[0][drv], self._card_np[1][drv]]
            else:
                has_np = None
        has = has_np.tolist() if has_np is not None else [False] * n
        return DayRecords(self.codec, np_cols, has, self.lay_plain, self.lay_card, np_cols[0].tolist(),
                          np_cols[9 + (self.codec == CODEC_16)].tolist(), has_np)


def build_many(jobs: list[tuple["RecordFactory", np.random.Generator, Track, DeviceState]]) -> list["DayRecords"]:
    """RecordFactory.build for several device-days at once: [(factory, model rng, track,
    state)] -> [DayRecords]. Each device's draws come from its own generator in the order
    of a build of its own; every other step is element-wise over all the records (the
    per-device constants as per-record arrays), so the records are the same."""
    out: list = [None] * len(jobs)
    live = []
    for k, (f, rng, tr, state) in enumerate(jobs):
        if len(tr):
            live.append(k)
        else:
            out[k] = DayRecords(f.codec, None, [], f.lay_plain, f.lay_card, [], [])
    if not live:
        return out
    J = [jobs[k] for k in live]
    ns = [len(j[2]) for j in J]
    bounds = [0]
    for n in ns:
        bounds.append(bounds[-1] + n)
    N = bounds[-1]
    cat = (lambda arrs: np.concatenate(arrs)) if len(J) > 1 else (lambda arrs: arrs[0])
    col = lambda name: cat([getattr(j[2], name) for j in J])
    rep = lambda vals, dtype=None: np.repeat(np.array(vals, dtype=dtype), ns)
    # The draws, device by device, in a build's order.
    d = [[] for _ in range(7)]
    for (f, rng, tr, state), n in zip(J, ns):
        d[0].append(rng.normal(0.0, 2.0, n))
        d[1].append(rng.normal(0.0, 2.0, n))
        d[2].append(rng.integers(6, 17, n))
        d[3].append(rng.normal(0, 180, n))
        d[4].append(rng.normal(0, 60, n))
        d[5].append(rng.integers(3950, 4150, n))
        d[6].append(rng.normal(0, 0.6, n))
    nx, ny, sats_d, ext1, ext2, batt, gsm_d = (cat(a) for a in d)
    tx, ty, fix = col("x"), col("y"), col("fix")
    geos = [j[0].tenant.geo for j in J]
    x = tx + nx
    y = ty + ny
    lat = rep([g.lat0 for g in geos]) + y / M_PER_DEG_LAT
    lon = rep([g.lon0 for g in geos]) + x / rep([g.m_per_deg_lon for g in geos])
    lat_i = np.rint(lat * 1e7).astype(np.int64)
    lon_i = np.rint(lon * 1e7).astype(np.int64)
    base, ph = rep([j[0]._terrain[0] for j in J]), rep([j[0]._terrain[1] for j in J])
    alt = np.rint(base + 35.0 * np.sin(tx / 4100.0 + ph) + 22.0 * np.cos(ty / 2700.0 - ph)).astype(np.int64)
    # No fix: carry the last fix (from an earlier day if need be; 0 if never).
    idx = np.where(fix, np.arange(N), -1)
    last = np.maximum.accumulate(idx)
    found = last >= rep(bounds[:-1], np.int64)          # a fix of the same device-day
    lfs = [j[3].last_fix or (0, 0, 0) for j in J]
    src = np.maximum(last, 0)
    lat_i = np.where(found, lat_i[src], rep([q[0] for q in lfs], np.int64))
    lon_i = np.where(found, lon_i[src], rep([q[1] for q in lfs], np.int64))
    alt = np.where(found, alt[src], rep([q[2] for q in lfs], np.int64))
    for (f, rng, tr, state), e in zip(J, bounds[1:]):
        if found[e - 1]:
            state.last_fix = (int(lat_i[e - 1]), int(lon_i[e - 1]), int(alt[e - 1]))
    sats = np.where(fix, sats_d, 0)
    angle = np.where(fix, col("angle"), 0)
    speed = np.where(fix, np.rint(col("speed")), 0).astype(np.int64)
    ign8, mov8, priv8 = col("ign"), col("mov"), col("priv")
    ign = ign8.astype(bool)
    ext = np.where(ign, 13900 + ext1, 12480 + ext2)
    ext = np.clip(np.rint(ext), 11000, 14800).astype(np.int64)
    gsm = np.clip(np.rint(3.5 + 1.2 * np.sin(tx / 3000.0) + gsm_d), 1, 5).astype(np.int64)
    cell = ((np.floor(tx / 1500).astype(np.int64) * 73856093) ^ (np.floor(ty / 1500).astype(np.int64) * 19349663)) & 0xFFFF
    lac = (rep([1000 + 97 * j[0].tenant.index for j in J], np.int64)
           + (np.floor(tx / 12000).astype(np.int64) * 7 + np.floor(ty / 12000).astype(np.int64)) % 50)
    odo = np.rint(col("odo")).astype(np.int64)
    ev = col("event")
    prio = (ev != 0).astype(np.int64)
    event = ev.astype(np.int64)
    if any(j[0].fam64 for j in J):
        event = np.where(rep([j[0].fam64 for j in J], bool) & (event == EV_DRIVER), 217, event)
    ms = col("t") * 1000
    gen = np.where(event != 0, 5, 7)
    gnss = np.where(fix, 1, 2)
    drv_all = col("drv")
    # Per device: its columns in row order (rows are plain int tuples, as
    # fleetcloak.codecs.encode_rows takes them): the GPS part, the event id (+ generation
    # type), then the IO values in the layout's key order, the card halves last and only
    # on rows whose driver has a card. encode_columns packs them; the rows themselves are
    # made only when asked for (faults, tests), by DayRecords.
    for k, (f, rng, tr, state), a, b in zip(live, J, bounds[:-1], bounds[1:]):
        sl = slice(a, b)
        np_cols = [ms[sl], prio[sl], lon_i[sl], lat_i[sl], alt[sl], angle[sl], sats[sl], speed[sl], event[sl]]
        if f.codec == CODEC_16:
            np_cols.append(gen[sl])
        np_cols += [ign8[sl], mov8[sl], gsm[sl]]
        if not f.fam64:
            np_cols.append(gnss[sl])
        if f.has_private:
            np_cols.append(priv8[sl])
        np_cols += [speed[sl], ext[sl], batt[sl], cell[sl], lac[sl], odo[sl]]
        out[k] = f._day(np_cols, drv_all[sl], b - a)
    return out


class DayRecords(Sequence):
    """A device-day's records as numpy columns in row order (what encode_columns packs)
    plus the lists the packetiser reads (timestamps, ignition, which rows carry the card
    halves). Rows (int tuples, as encode_rows takes them) are made on demand, for a range
    (rows_range) or all of them (rows); indexing or iterating gives AvlRecords, made on
    demand too (tests; the CLI never needs them)."""

    __slots__ = ("codec", "np_cols", "has_card", "lay_plain", "lay_card", "ms", "ign", "n",
                 "_has_np", "_rows", "_recs")

    def __init__(self, codec, np_cols, has_card, lay_plain, lay_card, ms, ign, has_np=None, n=None):
        self.codec, self.np_cols, self.has_card = codec, np_cols, has_card
        self.lay_plain, self.lay_card = lay_plain, lay_card
        self.ms, self.ign = ms, ign
        self.n = len(ms) if n is None else n
        self._has_np = has_np          # bool array when some row carries the card halves
        self._rows = None
        self._recs = None

    def rows_range(self, a: int, b: int) -> list[tuple]:
        """Rows a..b-1 as int tuples (card halves only on the rows that have them)."""
        b = min(b, self.n)
        if a >= b:
            return []
        cols = self.np_cols
        if self._has_np is None:
            return list(zip(*[c[a:b].tolist() for c in cols]))
        plain = self.lay_plain.row_len
        rows = list(zip(*[c[a:b].tolist() for c in cols[:plain]]))
        cards = zip(cols[plain][a:b].tolist(), cols[plain + 1][a:b].tolist())
        return [r + c if h else r for r, c, h in zip(rows, cards, self.has_card[a:b])]

    @property
    def rows(self) -> list[tuple]:
        if self._rows is None:
            self._rows = self.rows_range(0, self.n)
        return self._rows

    def encoded(self) -> tuple[bytes, list[int]] | None:
        """Every record's bytes back to back and where each starts (fleetcloak.codecs
        avl.encode_columns), or None without records."""
        cols = self.np_cols
        n = self.n
        if cols is None or not n:
            return None
        if len(cols[0]) != n:  # head(): cut the columns too
            cols = [c[:n] for c in cols]
        if self._has_np is not None and any(self.has_card[:n]):
            return encode_columns(self.codec, (self.lay_plain, self.lay_card),
                                  self._has_np[:n].astype(np.int8), cols)
        return encode_columns(self.codec, (self.lay_plain,), None, cols[:self.lay_plain.row_len])

    def lays(self, has_card) -> list:
        p, c = self.lay_plain, self.lay_card
        return [c if h else p for h in has_card]

    def records(self) -> list[AvlRecord]:
        if self._recs is None:
            p, c = self.lay_plain, self.lay_card
            self._recs = [record_from_row(c if h else p, r) for r, h in zip(self.rows, self.has_card)]
        return self._recs

    def head(self, k: int) -> "DayRecords":
        return DayRecords(self.codec, self.np_cols, self.has_card[:k], self.lay_plain, self.lay_card,
                          self.ms[:k], self.ign[:k], self._has_np, min(k, self.n))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.records()[i]

    def __iter__(self):
        return iter(self.records())


def _encode_mixed(first: "DayRecords", card: np.ndarray, cols: list) -> tuple[bytes, list[int]]:
    """encode_columns of records of two layouts (`card`: which carry the card halves) as
    two one-layout calls, the plain records' and the card records', whose bytes are then
    laid back in record order run by run (a driver's card rows come in long runs): the
    same bytes as one call with both layouts, without its per-byte scatter."""
    plain_n = first.lay_plain.row_len
    sp, sc = first.lay_plain.size, first.lay_card.size
    pb = cb = b""
    if not card.all():
        pb, _ = encode_columns(first.codec, (first.lay_plain,), None, [c[~card] for c in cols[:plain_n]])
    if card.any():
        cb, _ = encode_columns(first.codec, (first.lay_card,), None, [c[card] for c in cols])
    sizes = np.where(card, sc, sp)
    off = np.zeros(len(card) + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    cuts = [0, *(np.flatnonzero(card[1:] != card[:-1]) + 1).tolist(), len(card)]
    parts = []
    ip = ic = 0
    is_card = bool(card[0]) if len(card) else False
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        if is_card:
            parts.append(cb[ic:ic + (r1 - r0) * sc])
            ic += (r1 - r0) * sc
        else:
            parts.append(pb[ip:ip + (r1 - r0) * sp])
            ip += (r1 - r0) * sp
        is_card = not is_card
    return b"".join(parts), off.tolist()


def encode_days(days: Sequence["DayRecords"]) -> list[tuple[bytes, list[int], int] | None]:
    """DayRecords.encoded() for several device-days at once: one encode_columns call per
    codec and layout pair over the concatenated columns (a record's bytes depend on its
    own values and layout only, so they are the same bytes). Per day: (blob, offsets,
    base), the day's record i starting at blob[offsets[base + i]], or None without records."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(days):
        if d.np_cols is not None and d.n:
            groups.setdefault((d.codec, id(d.lay_plain), id(d.lay_card)), []).append(i)
    out: list = [None] * len(days)
    for idx in groups.values():
        first = days[idx[0]]
        if len(idx) == 1:
            blob, off = first.encoded()
            out[idx[0]] = (blob, off, 0)
            continue
        plain, card = first.lay_plain.row_len, first.lay_card.row_len
        cut = [d.np_cols if len(d.np_cols[0]) == d.n else [c[:d.n] for c in d.np_cols]
               for d in (days[i] for i in idx)]
        with_card = any(days[i]._has_np is not None and any(days[i].has_card) for i in idx)
        width = card if with_card else plain
        cols = []
        for j in range(width):
            if j < plain:
                cols.append(np.concatenate([c[j] for c in cut]))
            else:
                cols.append(np.concatenate([c[j] if len(c) > j else np.zeros(days[i].n, dtype=np.uint64)
                                            for c, i in zip(cut, idx)]))
        if with_card:
            which = np.concatenate([days[i]._has_np[:days[i].n] if days[i]._has_np is not None
                                    else np.zeros(days[i].n, dtype=bool) for i in idx])
            blob, off = _encode_mixed(first, which, cols)
        else:
            blob, off = encode_columns(first.codec, (first.lay_plain,), None, cols)
        base = 0
        for i in idx:
            out[i] = (blob, off, base)
            base += days[i].n
    return out

"""From a device-day Track to AVL records: GNSS fields, noise, fix loss and IO values.

Vectorised per device-day (numpy), then zipped into rows (int tuples) that the encoder
packs as they are; AvlRecord objects are made only on demand (DayRecords).

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
from .fleet import Fleet, Vehicle
from .trips import EV_DRIVER, DeviceState, Track


class RecordFactory:
    def __init__(self, fleet: Fleet, veh: Vehicle):
        self.veh = veh
        self.codec = veh.codec
        self.tenant = fleet.tenant(veh.tenant)
        fam = veh.family
        self.fam64 = fam == "64x"
        self.driver_io = 217 if self.fam64 else 78
        self.card_ios = (195, 196) if self.fam64 else (147, 148)
        self.has_private = self.codec == CODEC_8E
        # The ibutton value and card halves of each driver, by driver index.
        self.keys = {d.index: d.ibutton_int for d in fleet.drivers}
        self.cards = {
            d.index: (int.from_bytes(d.tacho_card[:8].encode(), "big"),
                      int.from_bytes(d.tacho_card[8:].encode(), "big"))
            for d in fleet.drivers if d.tacho_card
        }
        # The same as lists indexed by driver index, -1 (no driver) hitting the last entry.
        n_drv = len(fleet.drivers)
        self._key_at = [self.keys.get(i, 0) for i in range(n_drv)] + [0]
        self._card_at = [self.cards.get(i) for i in range(n_drv)] + [None]
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
        n = len(tr)
        if n == 0:
            return DayRecords(self.codec, [], [], self.lay_plain, self.lay_card, [], [])
        geo = self.tenant.geo
        fix = tr.fix
        x = tr.x + rng.normal(0.0, 2.0, n)
        y = tr.y + rng.normal(0.0, 2.0, n)
        lat, lon = geo.to_deg(x, y)
        lat_i = np.rint(lat * 1e7).astype(np.int64)
        lon_i = np.rint(lon * 1e7).astype(np.int64)
        alt = self.altitude(tr.x, tr.y)
        # No fix: carry the last fix (from an earlier day if need be; 0 if never).
        idx = np.where(fix, np.arange(n), -1)
        last = np.maximum.accumulate(idx)
        lf = state.last_fix or (0, 0, 0)
        lat_i = np.where(last >= 0, lat_i[np.maximum(last, 0)], lf[0])
        lon_i = np.where(last >= 0, lon_i[np.maximum(last, 0)], lf[1])
        alt = np.where(last >= 0, alt[np.maximum(last, 0)], lf[2])
        if fix.any():
            j = int(np.flatnonzero(fix)[-1])
            state.last_fix = (int(lat_i[j]), int(lon_i[j]), int(alt[j]))
        sats = np.where(fix, rng.integers(6, 17, n), 0)
        angle = np.where(fix, tr.angle, 0)
        speed = np.where(fix, np.rint(tr.speed), 0).astype(np.int64)
        ign = tr.ign.astype(bool)
        ext = np.where(ign, 13900 + rng.normal(0, 180, n), 12480 + rng.normal(0, 60, n))
        ext = np.clip(np.rint(ext), 11000, 14800).astype(np.int64)
        batt = rng.integers(3950, 4150, n)
        gsm = np.clip(np.rint(3.5 + 1.2 * np.sin(tr.x / 3000.0) + rng.normal(0, 0.6, n)), 1, 5).astype(np.int64)
        cell = ((np.floor(tr.x / 1500).astype(np.int64) * 73856093) ^ (np.floor(tr.y / 1500).astype(np.int64) * 19349663)) & 0xFFFF
        lac = (1000 + 97 * self.tenant.index + (np.floor(tr.x / 12000).astype(np.int64) * 7 + np.floor(tr.y / 12000).astype(np.int64)) % 50)
        odo = np.rint(tr.odo).astype(np.int64)
        prio = (tr.event != 0).astype(np.int64)
        event = tr.event.astype(np.int64)
        if self.fam64:
            event = np.where(event == EV_DRIVER, self.driver_io, event)
        ms = tr.t * 1000

        # Rows (plain int tuples, as fleetcloak.codecs.encode_rows takes them): the GPS
        # part, the event id (+ generation type), then the IO values in the layout's key
        # order, the card halves last and only on rows whose driver has a card.
        drv = tr.drv.tolist()
        key_at = self._key_at
        dkey = [key_at[d] for d in drv]
        spd = speed.tolist()
        cols = [ms.tolist(), prio.tolist(), lon_i.tolist(), lat_i.tolist(), alt.tolist(),
                angle.tolist(), sats.tolist(), spd, event.tolist()]
        if self.codec == CODEC_16:
            cols.append(np.where(event != 0, 5, 7).tolist())
        cols += [tr.ign.tolist(), tr.mov.tolist(), gsm.tolist()]
        if not self.fam64:
            cols.append(np.where(fix, 1, 2).tolist())
        if self.has_private:
            cols.append(tr.priv.tolist())
        cols += [spd, ext.tolist(), batt.tolist(), cell.tolist(), lac.tolist(), odo.tolist(), dkey]
        rows = list(zip(*cols))
        # The same as numpy columns, for encode_columns (the whole day's bytes at once).
        np_cols = [ms, prio, lon_i, lat_i, alt, angle, sats, speed, event]
        if self.codec == CODEC_16:
            np_cols.append(np.where(event != 0, 5, 7))
        np_cols += [tr.ign, tr.mov, gsm]
        if not self.fam64:
            np_cols.append(np.where(fix, 1, 2))
        if self.has_private:
            np_cols.append(tr.priv)
        np_cols += [speed, ext, batt, cell, lac, odo, np.array(dkey, dtype=np.uint64)]
        card_of = None
        if self._cards_possible:
            card_at = self._card_at
            card_of = [card_at[d] for d in drv]
            has = [c is not None for c in card_of]
            if any(has):
                rows = [r + c if c else r for r, c in zip(rows, card_of)]
                np_cols += [np.array([c[0] if c else 0 for c in card_of], dtype=np.uint64),
                            np.array([c[1] if c else 0 for c in card_of], dtype=np.uint64)]
        else:
            has = [False] * n
        day = DayRecords(self.codec, rows, has, self.lay_plain, self.lay_card, cols[0],
                         cols[9 + (self.codec == CODEC_16)])
        day.np_cols = np_cols
        return day


class DayRecords(Sequence):
    """A device-day's records as rows (what the encoder packs) plus the columns the
    packetiser reads (timestamps, ignition). Indexing or iterating gives AvlRecords,
    made on demand (tests; the CLI never needs them)."""

    __slots__ = ("codec", "rows", "has_card", "lay_plain", "lay_card", "ms", "ign", "_recs", "np_cols")

    def __init__(self, codec, rows, has_card, lay_plain, lay_card, ms, ign):
        self.codec, self.rows, self.has_card = codec, rows, has_card
        self.lay_plain, self.lay_card = lay_plain, lay_card
        self.ms, self.ign = ms, ign
        self._recs = None
        self.np_cols = None

    def encoded(self) -> tuple[bytes, list[int]] | None:
        """Every record's bytes back to back and where each starts (fleetcloak.codecs
        avl.encode_columns), or None without the numpy columns."""
        cols = self.np_cols
        if cols is None or not self.rows:
            return None
        n = len(self.rows)
        if len(cols[0]) != n:  # head(): cut the columns too
            cols = [c[:n] for c in cols]
        if len(cols) == self.lay_card.row_len and any(self.has_card):
            return encode_columns(self.codec, (self.lay_plain, self.lay_card),
                                  np.array(self.has_card, dtype=np.int8), cols)
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
        d = DayRecords(self.codec, self.rows[:k], self.has_card[:k], self.lay_plain, self.lay_card,
                       self.ms[:k], self.ign[:k])
        d.np_cols = self.np_cols
        return d

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.records()[i]

    def __iter__(self):
        return iter(self.records())

"""From a device-day Track to AVL records: GNSS fields, noise, fix loss and IO values.

Vectorised per device-day (numpy), then one cheap loop builds the AvlRecord objects.

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

import numpy as np

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
        # io_width dicts are shared by every record of a layout (AvlRecord never mutates
        # them); they must list exactly the fixed-size ids present, as decode returns.
        n1 = [239, 240, 21] + ([] if self.fam64 else [69]) + ([391] if self.has_private else [])
        n2 = [24, 66, 67, 205, 206]
        w = {i: 1 for i in n1} | {i: 2 for i in n2} | {16: 4, self.driver_io: 8}
        self.width_plain = w
        self.width_card = w | {self.card_ios[0]: 8, self.card_ios[1]: 8}
        phase = self.tenant.road_theta * 1000.0
        self._terrain = (float(40 + 300 * (self.tenant.index % 3)), phase)

    def altitude(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        base, ph = self._terrain
        return np.rint(base + 35.0 * np.sin(x / 4100.0 + ph) + 22.0 * np.cos(y / 2700.0 - ph)).astype(np.int64)

    def build(self, rng: np.random.Generator, tr: Track, state: DeviceState) -> list[AvlRecord]:
        n = len(tr)
        if n == 0:
            return []
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

        keys, cards = self.keys, self.cards
        out: list[AvlRecord] = []
        append = out.append
        codec16 = self.codec == CODEC_16
        wp, wc = self.width_plain, self.width_card
        drv_io, (c1, c2) = self.driver_io, self.card_ios
        fam64, has_private = self.fam64, self.has_private
        for (t, p, lo, la, al, an, sa, sp, ev, ig, mv, gs, sp24, ex, ba, ce, la_c, od, dr, pv, fx) in zip(
                ms.tolist(), prio.tolist(), lon_i.tolist(), lat_i.tolist(), alt.tolist(),
                angle.tolist(), sats.tolist(), speed.tolist(), event.tolist(),
                tr.ign.tolist(), tr.mov.tolist(), gsm.tolist(), speed.tolist(), ext.tolist(),
                batt.tolist(), cell.tolist(), lac.tolist(), odo.tolist(), tr.drv.tolist(),
                tr.priv.tolist(), fix.tolist()):
            if fam64:
                io = {239: ig, 240: mv, 21: gs}
            elif has_private:
                io = {239: ig, 240: mv, 21: gs, 69: 1 if fx else 2, 391: pv}
            else:
                io = {239: ig, 240: mv, 21: gs, 69: 1 if fx else 2}
            io[24] = sp24
            io[66] = ex
            io[67] = ba
            io[205] = ce
            io[206] = la_c
            io[16] = od
            io[drv_io] = keys[dr] if dr >= 0 else 0
            card = cards.get(dr) if dr >= 0 else None
            if card is not None:
                io[c1], io[c2] = card
            append(AvlRecord(t, p, lo / 1e7, la / 1e7, al, an, sa, sp, ev, io,
                             wc if card is not None else wp,
                             (5 if ev else 7) if codec16 else None))
        return out

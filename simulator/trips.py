"""Where a vehicle is, second by second: road-like paths, speed profiles and day plans.

A drive from A to B (local metres) is built in three vectorised steps:
  1. path   a street-grid route (legs along the tenant's grid orientation, random
            splits, a little jitter), corners rounded by Chaikin cutting, resampled
            every 20 m;
  2. speed  a limit per node: road class by distance from the ends (urban 50 km/h up
            to ~100 km/h on long trips), corner speed from the curvature (lateral
            acceleration <= 2 m/s^2), red lights (v = 0 plus a dwell), and
            acceleration/braking limits applied with a min-accumulate (no Python loop:
            v_i^2 - 2as_i <= min over j <= i of (v_j^2 - 2as_j));
  3. time   t(s) from the mean speed of each 20 m piece, dwells inserted; records are
            sampled at the device's period with np.interp.
So a vehicle never teleports, never exceeds ~130 km/h, and turns at most ~20 degrees
per 20 m. A day plan strings drives together: home -> depot -> jobs -> depot -> home,
an afternoon driver change on shared vehicles, evening private trips for drivers who
use private mode, and parking (records at the stop period) in between.

Output: a `Track`, columns of one device-day sorted by time (unique seconds), in local
metres; telemetry.py turns it into AVL records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .fleet import Fleet, Vehicle

DAY_S = 86_400
STEP_M = 20.0
A_ACC, A_DEC, A_LAT = 1.4, 2.2, 2.0   # m/s^2
V_MAX = 36.0                            # m/s (~130 km/h)

# Event IO ids used by the planner (FMB numbering; telemetry.py maps them per family).
EV_NONE, EV_DRIVER, EV_IGNITION, EV_MOVEMENT, EV_PRIVATE = 0, 78, 239, 240, 391


@dataclass
class DeviceState:
    """What carries over from one simulated day to the next."""

    x: float
    y: float
    odo_m: float = 0.0
    last_fix: tuple[int, int, int] | None = None   # (lat e7, lon e7, alt) of the last fix
    heading: int = 0
    t_last: int = -1            # epoch second of the last record made (days may overrun midnight)


_COLS = (("t", np.int64), ("x", np.float64), ("y", np.float64), ("speed", np.float64),
         ("angle", np.int64), ("ign", np.int8), ("mov", np.int8), ("fix", bool),
         ("event", np.int32), ("drv", np.int32), ("priv", np.int8), ("odo", np.float64))


class _Cols:
    """Pieces of a track (scalars or arrays per column), filled into arrays once."""

    __slots__ = ("pieces", "n", "last_t")

    def __init__(self, last_t: int):
        self.pieces: list[tuple] = []
        self.n = 0
        self.last_t = last_t

    def add(self, t, *values) -> None:
        n = len(t)
        if n:
            self.pieces.append((self.n, n, t, values))
            self.n += n
            self.last_t = int(t[-1])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: np.empty(self.n, dtype=dt) for name, dt in _COLS}
        cols = [out[name] for name, _ in _COLS]
        for i, n, t, values in self.pieces:
            cols[0][i:i + n] = t
            for c, v in zip(cols[1:], values):
                c[i:i + n] = v
        return out


@dataclass
class Track:
    """One device-day, sorted by `t` (epoch seconds, unique). Positions in local metres."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    speed: np.ndarray
    angle: np.ndarray
    ign: np.ndarray
    mov: np.ndarray
    fix: np.ndarray
    event: np.ndarray
    drv: np.ndarray
    priv: np.ndarray
    odo: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


# ----------------------------------------------------------------------------- paths
def road_path(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, theta: float) -> np.ndarray:
    """A street-grid-like polyline from a to b (N x 2 metres), corners rounded."""
    d = b - a
    u = np.array([math.cos(theta), math.sin(theta)])
    v = np.array([-math.sin(theta), math.cos(theta)])
    pu, pv = float(d @ u), float(d @ v)
    m = max(1, min(8, int(np.hypot(*d) / 1800)))
    wu = rng.dirichlet(np.ones(m)) * pu
    wv = rng.dirichlet(np.ones(m)) * pv
    steps = np.empty((2 * m, 2))
    steps[0::2] = wu[:, None] * u
    steps[1::2] = wv[:, None] * v
    pts = np.vstack([a, a + np.cumsum(steps, axis=0)])
    pts[1:-1] += rng.normal(0.0, 25.0, size=(len(pts) - 2, 2))
    pts[-1] = b
    seg = np.hypot(*np.diff(pts, axis=0).T)
    pts = np.vstack([pts[0], pts[1:][seg > 1.0]])
    if len(pts) < 2:
        pts = np.vstack([a, b])
    for _ in range(3):  # Chaikin corner cutting, endpoints kept
        p0, p1 = pts[:-1], pts[1:]
        q = np.empty((2 * len(p0), 2))
        q[0::2] = 0.75 * p0 + 0.25 * p1
        q[1::2] = 0.25 * p0 + 0.75 * p1
        pts = np.vstack([pts[0], q[1:-1], pts[-1]]) if len(q) > 2 else np.vstack([pts[0], pts[-1]])
    return pts


def _resample(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    n = max(2, int(math.ceil(total / STEP_M)) + 1)
    sn = np.linspace(0.0, total, n)
    return sn, np.interp(sn, s, pts[:, 0]), np.interp(sn, s, pts[:, 1])


@dataclass
class Drive:
    t_end: float              # arrival, epoch seconds (float)
    t: np.ndarray             # sample times (int seconds) strictly inside (t0, t_end)
    x: np.ndarray
    y: np.ndarray
    speed: np.ndarray         # km/h
    angle: np.ndarray         # degrees 0..359
    s: np.ndarray             # metres driven at each sample
    length: float             # metres
    end_heading: int


def drive(rng: np.random.Generator, a, b, t0: float, theta: float, period: int, phase: int) -> Drive:
    """Drive from a to b starting at t0; samples every `period` s on the device's grid."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    sn, xn, yn = _resample(road_path(rng, a, b, theta))
    total = float(sn[-1])
    ds = np.diff(sn)
    dx, dy = np.diff(xn), np.diff(yn)
    head = np.arctan2(dx, dy)                      # from north, clockwise
    n = len(sn)
    # Road class: urban near the ends, faster in the middle of long trips.
    d_end = np.minimum(sn, total - sn)
    fast = 13.9 + (27.0 - 13.9) * np.clip((d_end - 1500.0) / 3000.0, 0.0, 1.0)
    vc = fast * rng.uniform(0.85, 1.1)
    wob = np.cumsum(rng.normal(0.0, 1.0, n))
    wob = (wob - np.linspace(wob[0], wob[-1], n)) / max(1.0, math.sqrt(n))
    vc = np.clip(vc * (1.0 + 0.08 * np.tanh(wob)), 3.0, V_MAX)
    # Corners: curvature at interior nodes.
    dh = np.abs((np.diff(head) + np.pi) % (2 * np.pi) - np.pi)
    kappa = np.zeros(n)
    kappa[1:-1] = dh / np.maximum(0.5 * (ds[:-1] + ds[1:]), 1.0)
    vcorner = np.sqrt(A_LAT / np.maximum(kappa, 1e-6))
    vlim = np.minimum(vc, np.maximum(vcorner, 3.0))
    # Red lights / give-ways: about one per 1.5 km, never in the first or last 100 m.
    dwell = np.zeros(n)
    if n > 12:
        k = rng.poisson(total / 1500.0)
        if k:
            idx = np.unique(rng.integers(5, n - 5, size=k))
            vlim[idx] = 0.0
            dwell[idx] = rng.uniform(5.0, 45.0, size=len(idx))
    vlim[0] = vlim[-1] = 0.0
    v2 = vlim ** 2
    v2 = np.minimum(v2, np.minimum.accumulate(v2 - 2 * A_ACC * sn) + 2 * A_ACC * sn)
    v2 = np.minimum(v2, (np.minimum.accumulate((v2 + 2 * A_DEC * sn)[::-1]))[::-1] - 2 * A_DEC * sn)
    v = np.sqrt(np.maximum(v2, 0.0))
    vm = np.maximum(0.5 * (v[:-1] + v[1:]), 0.3)
    arrive = t0 + np.concatenate([[0.0], np.cumsum(ds / vm)])
    arrive[1:] += np.cumsum(dwell)[:-1]
    depart = arrive + dwell
    tt = np.empty(2 * n)
    tt[0::2], tt[1::2] = arrive, depart
    ss = np.repeat(sn, 2)
    vv = np.repeat(v, 2)
    t_end = float(depart[-1])
    first = phase + period * math.floor((t0 - phase) / period + 1)
    ts = np.arange(first, t_end, period, dtype=np.int64)
    ts = ts[(ts > t0) & (ts < t_end)]
    s_at = np.interp(ts, tt, ss)
    seg = np.clip(np.searchsorted(sn, s_at, side="right") - 1, 0, n - 2)
    ang = (np.rint(np.degrees(head[seg])).astype(np.int64)) % 360
    spd = np.interp(ts, tt, vv) * 3.6
    end_heading = int(round(math.degrees(head[-1]))) % 360
    return Drive(t_end, ts, np.interp(s_at, sn, xn), np.interp(s_at, sn, yn), spd, ang, s_at,
                 total, end_heading)


# -------------------------------------------------------------------------- day plan
class DayPlanner:
    """Builds one device-day Track. Stateless apart from the DeviceState it is given."""

    def __init__(self, fleet: Fleet, veh: Vehicle):
        self.fleet = fleet
        self.veh = veh
        self.tenant = fleet.tenant(veh.tenant)
        self.home = np.array(fleet.drivers[veh.primary].home_xy)
        self.depot = np.zeros(2)

    def plan(self, rng: np.random.Generator, day_t0: int, state: DeviceState) -> Track:
        cols = _Cols(state.t_last)
        self._cols, self._rng, self._st = cols, rng, state
        self._t = float(max(day_t0, state.t_last))   # time up to which records exist
        self._drv = -1
        self._priv = 0
        veh = self.veh
        off = self.tenant.utc_offset_h
        local = lambda h: day_t0 + (h - off) * 3600.0
        weekday = (day_t0 // DAY_S + 3) % 7           # 0 = Monday (1970-01-01 was a Thursday)
        primary = self.fleet.drivers[veh.primary]
        workday = weekday < 5 or (weekday == 5 and rng.random() < 0.2)
        if workday and rng.random() < 0.04:
            workday = False                              # sick day / vehicle in the workshop
        if workday:
            self._park_until(local(rng.uniform(6.5, 8.5)), garage=primary.garage)
            self._leg(self.depot, veh.primary)
            self._park_until(self._t + rng.uniform(600, 1800))
            shared = veh.secondary is not None
            shift = veh.primary                      # who drives now
            for _ in range(int(rng.integers(2, 7))):
                if self._t > local(16.5):
                    break
                if shared and shift == veh.primary and self._t > local(12.0):
                    self._leg(self.depot, shift)     # hand over at the depot
                    self._park_until(self._t + rng.uniform(900, 1800))
                    shift = veh.secondary
                self._leg(self._job(), shift)
                self._park_until(self._t + rng.uniform(600, 3000))
            self._leg(self.depot, shift)
            self._park_until(self._t + rng.uniform(600, 1200))
            self._leg(self.home, veh.primary)
            if primary.private_mode and rng.random() < 0.4 and self._t < local(19.0):
                self._park_until(local(rng.uniform(19.0, 20.5)), garage=primary.garage)
                self._private_trip(veh.primary)
        elif primary.private_mode and rng.random() < 0.35:
            self._park_until(local(rng.uniform(10.0, 15.0)), garage=primary.garage)
            self._private_trip(veh.primary)
        self._park_until(day_t0 + DAY_S, garage=primary.garage)
        return self._finish()

    # -- pieces --------------------------------------------------------------------
    def _job(self) -> np.ndarray:
        r = self._rng.uniform(2000, 22000)
        a = self._rng.uniform(0, 2 * math.pi)
        return np.array([r * math.cos(a), r * math.sin(a)])

    def _private_trip(self, drv: int) -> None:
        rng = self._rng
        here = np.array([self._st.x, self._st.y])
        r, a = rng.uniform(1500, 9000), rng.uniform(0, 2 * math.pi)
        self._event(self._t + 1, EV_PRIVATE, priv=1)
        self._leg(here + [r * math.cos(a), r * math.sin(a)], drv)
        self._park_until(self._t + rng.uniform(1200, 5400))
        self._leg(here, drv)
        self._event(self._t + 1, EV_PRIVATE, priv=0)

    def _event(self, t: float, ev: int, *, ign: int = 0, mov: int = 0, priv: int | None = None,
               speed: float = 0.0, fix: bool = True) -> None:
        st = self._st
        if priv is not None:
            self._priv = priv
        ti = int(math.ceil(t))
        if ti <= self._t_last():
            ti = self._t_last() + 1
        self._cols.add((ti,), st.x, st.y, speed, st.heading if mov else 0, ign, mov, fix, ev,
                       self._drv if ign else -1, self._priv, st.odo_m)
        self._t = float(ti)

    def _t_last(self) -> int:
        return self._cols.last_t

    def _park_until(self, t_end: float, *, garage: bool = False) -> None:
        """Parked, ignition off, records every stop period up to t_end."""
        veh, st = self.veh, self._st
        t0 = max(self._t, float(self._t_last()))
        p = veh.stop_period_s
        first = veh.phase_s + p * math.floor((t0 - veh.phase_s) / p + 1)
        ts = np.arange(first, t_end, p, dtype=np.int64)
        ts = ts[ts > self._t_last()]
        self._cols.add(ts, st.x, st.y, 0.0, 0, 0, 0, not garage, EV_NONE, -1, self._priv, st.odo_m)
        self._t = max(self._t, t_end)

    def _leg(self, dest: np.ndarray, drv: int) -> None:
        """Ignition on (driver key), warm-up, drive, stop, ignition off."""
        rng, st, veh = self._rng, self._st, self.veh
        self._drv = -1
        self._event(self._t, EV_IGNITION, ign=1)
        self._drv = drv
        self._event(self._t + rng.uniform(2, 8), EV_DRIVER, ign=1)
        t_go = self._t + rng.uniform(20, 90)
        self._event(t_go, EV_MOVEMENT, ign=1, mov=1)
        d = drive(rng, (st.x, st.y), dest, self._t, self.tenant.road_theta, veh.move_period_s,
                  veh.phase_s)
        fix = np.ones(len(d.t), dtype=bool)
        if len(d.t) > 6 and rng.random() < 0.12:      # tunnel / urban canyon: no fix
            i0 = int(rng.integers(1, len(d.t) - 3))
            k = int(rng.integers(2, max(3, min(len(d.t) - i0, 20))))
            fix[i0:i0 + k] = False
        self._cols.add(d.t, d.x, d.y, d.speed, d.angle, 1, 1, fix, EV_NONE, drv, self._priv,
                       st.odo_m + d.s)
        st.x, st.y = float(dest[0]), float(dest[1])
        st.odo_m += d.length
        st.heading = d.end_heading
        self._t = max(d.t_end, float(self._t_last()))
        self._event(self._t, EV_MOVEMENT, ign=1, mov=0)
        self._event(self._t + rng.uniform(5, 60), EV_IGNITION, ign=0)
        self._drv = -1

    def _finish(self) -> Track:
        tr = Track(**self._cols.arrays())
        # Segments are appended in time order with strictly increasing seconds.
        assert len(tr.t) < 2 or bool(np.all(np.diff(tr.t) > 0)), "track times must increase"
        if len(tr.t):
            self._st.t_last = int(tr.t[-1])
        return tr

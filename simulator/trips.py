"""Where a vehicle is, second by second: road-like paths, speed profiles and day plans.

A drive from A to B (local metres) is built in three steps, vectorised over every drive
of a device-day at once (plan_drives), or of every device of a simulated day
(plan_drives_many: the same drives, each device's draws from its own generator):
  1. path   a street-grid route (legs along the tenant's grid orientation, random
            splits, a little jitter), corners rounded by Chaikin cutting, resampled
            every 80 m (STEP_M);
  2. speed  a limit per node: road class by distance from the ends (urban 50 km/h up
            to ~100 km/h on long trips), corner speed from the curvature (lateral
            acceleration <= 2 m/s^2), red lights (v = 0 plus a dwell), and
            acceleration/braking limits applied with a min-accumulate (no Python loop:
            v_i^2 - 2as_i <= min over j <= i of (v_j^2 - 2as_j));
  3. time   t(s) from the mean speed of each piece, dwells inserted; records are
            sampled at the device's period with np.interp.
So a vehicle never teleports, never exceeds ~130 km/h, and its heading changes by at
most ~60 degrees between nodes 80 m apart (99 % under 35), at corner speed. A day plan strings drives together: home -> depot -> jobs -> depot -> home,
an afternoon driver change on shared vehicles, evening private trips for drivers who
use private mode, and parking (records at the stop period) in between.

Output: a `Track`, columns of one device-day sorted by time (unique seconds), in local
metres; telemetry.py turns it into AVL records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fleet import Fleet, Vehicle

DAY_S = 86_400
STEP_M = 80.0
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
        """Most pieces are single records (events) or parked runs whose columns other than
        `t` are scalars: a column is the pieces' first values repeated by piece length (one
        np.repeat), then the few pieces holding arrays written over their slices."""
        pieces = self.pieces
        out = {name: np.empty(self.n, dtype=dt) for name, dt in _COLS}
        if not pieces:
            return out
        starts, ns, ts, values = zip(*pieces)
        ns_a = np.array(ns, dtype=np.int64)
        by_col = list(zip(*values))                     # one tuple per column after t
        # Pieces with array columns (the drive samples; events have a tuple t).
        vector = [k for k, p in enumerate(pieces)
                  if type(p[2]) is not tuple and any(type(v) is np.ndarray for v in p[3])]
        t = out["t"]
        t[:] = np.repeat(np.array([tk[0] for tk in ts], dtype=np.int64), ns_a)
        for k, n in enumerate(ns):
            if n > 1:  # t varies inside these
                t[starts[k]:starts[k] + n] = ts[k]
        for j, (name, dt) in enumerate(_COLS[1:]):
            vals = by_col[j]
            arr = [k for k in vector if type(vals[k]) is np.ndarray]
            if arr:
                vals = list(vals)
                for k in arr:
                    vals[k] = 0
            c = out[name]
            c[:] = np.repeat(np.array(vals, dtype=dt), ns_a)
            for k in arr:
                c[starts[k]:starts[k] + ns[k]] = by_col[j][k]
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
def _seg_starts(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., n_k - 1 for every group k, concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(_seg_starts(counts), counts)


@dataclass
class Drives:
    """L drives' nodes (every ~STEP_M), concatenated; node arrays are indexed by `start`."""

    start: np.ndarray       # first node of each drive
    count: np.ndarray       # nodes per drive
    s: np.ndarray           # metres from the drive's start
    x: np.ndarray
    y: np.ndarray
    v: np.ndarray           # m/s at the node (0 at red lights and the ends)
    head: np.ndarray        # heading leaving the node, degrees 0..359
    arrive: np.ndarray      # seconds from the drive's start
    dwell: np.ndarray       # seconds stopped at the node
    length: np.ndarray      # metres per drive
    duration: np.ndarray    # seconds per drive (arrival at the last node)


def plan_drives(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, theta: float) -> Drives:
    """Geometry, speed profile and timing of L drives in one vectorised pass."""
    return plan_drives_many([(rng, a, b, theta)])[0]


def _bounds(counts) -> list[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


def plan_drives_many(jobs: list[tuple[np.random.Generator, np.ndarray, np.ndarray, float]]) -> list[Drives]:
    """plan_drives for several devices at once: [(rng, a, b, theta)] -> [Drives].

    Every device's draws come from its own generator in the same order as a call of its
    own (so the drives are exactly plan_drives' for it), and every element-wise step runs
    once over the drives of all the devices; only the steps that run along a device's
    arrays (cumulative sums and minima, np.interp, the draws) loop over the devices.
    """
    G = len(jobs)
    Ls = [len(j[1]) for j in jobs]
    a = np.concatenate([j[1] for j in jobs]) if G > 1 else jobs[0][1]
    b = np.concatenate([j[2] for j in jobs]) if G > 1 else jobs[0][2]
    L = len(a)
    dev = np.repeat(np.arange(G), Ls)                    # device per drive
    lb = _bounds(Ls)                                     # drive ranges per device
    # ---- road-like paths (street grid, rounded corners), over all drives
    d = b - a
    uv = [(np.array([math.cos(j[3]), math.sin(j[3])]), np.array([-math.sin(j[3]), math.cos(j[3])]))
          for j in jobs]
    pu, pv = np.empty(L), np.empty(L)
    for g in range(G):
        pu[lb[g]:lb[g + 1]] = d[lb[g]:lb[g + 1]] @ uv[g][0]
        pv[lb[g]:lb[g + 1]] = d[lb[g]:lb[g + 1]] @ uv[g][1]
    m = np.clip((np.hypot(d[:, 0], d[:, 1]) / 1800).astype(np.int64), 1, 8)
    leg_of_w = np.repeat(np.arange(L), m)
    n = 2 * m + 1
    mid_n = (n - 2).tolist()                             # jittered corners per drive
    m_l = m.tolist()
    wb = _bounds([sum(m_l[lb[g]:lb[g + 1]]) for g in range(G)])
    wu, wv = np.empty(len(leg_of_w)), np.empty(len(leg_of_w))
    jit, factor, ph = [], [], []
    for g, (rng, *_rest) in enumerate(jobs):             # the draws, device by device
        wu[wb[g]:wb[g + 1]] = rng.random(wb[g + 1] - wb[g])
        wv[wb[g]:wb[g + 1]] = rng.random(wb[g + 1] - wb[g])
        jit.append(rng.normal(0.0, 25.0, size=(sum(mid_n[lb[g]:lb[g + 1]]), 2)))
        factor.append(rng.uniform(0.85, 1.1, Ls[g]))
        ph.append(rng.uniform(0, 2 * math.pi, (2, Ls[g])))
    wu += 0.05
    wv += 0.05
    wu = wu / np.bincount(leg_of_w, wu)[leg_of_w] * pu[leg_of_w]
    wv = wv / np.bincount(leg_of_w, wv)[leg_of_w] * pv[leg_of_w]
    leg = np.repeat(np.arange(L), n)
    k = _within(n)
    steps = np.zeros((len(leg), 2))
    inner = k > 0
    j = k[inner] - 1
    w_idx = np.repeat(_seg_starts(m), 2 * m) + j // 2
    along_u = (j % 2) == 0
    if G == 1:
        u, v = uv[0]
        steps[inner] = np.where(along_u[:, None], wu[w_idx][:, None] * u, wv[w_idx][:, None] * v)
    else:
        U = np.array([q[0] for q in uv])[dev][leg][inner]
        V = np.array([q[1] for q in uv])[dev][leg][inner]
        steps[inner] = np.where(along_u[:, None], wu[w_idx][:, None] * U, wv[w_idx][:, None] * V)
    steps[k == 0] = a
    n_l = n.tolist()
    pb = _bounds([sum(n_l[lb[g]:lb[g + 1]]) for g in range(G)])   # point ranges per device
    pts = np.empty_like(steps)
    for g in range(G):
        np.cumsum(steps[pb[g]:pb[g + 1]], axis=0, out=pts[pb[g]:pb[g + 1]])
    # cumsum runs over a device's drives: remove what its earlier drives added.
    ends = np.cumsum(n) - 1
    carry = np.zeros((L, 2))
    later = np.ones(L, dtype=bool)
    later[lb[:-1]] = False                               # first drive of each device: nothing
    carry[later] = pts[ends[np.flatnonzero(later) - 1]]
    pts -= np.repeat(carry, n, axis=0)
    last = k == (n - 1)[leg]
    pts[last] = b
    mid = inner & ~last
    pts[mid] += np.concatenate(jit) if G > 1 else jit[0]
    for _ in range(3):  # Chaikin, per drive; the first Q and last R are the endpoints
        same = leg[1:] == leg[:-1]
        p0, p1, lg = pts[:-1][same], pts[1:][same], leg[:-1][same]
        q = np.empty((2 * len(p0), 2))
        q[0::2] = 0.75 * p0 + 0.25 * p1
        q[1::2] = 0.25 * p0 + 0.75 * p1
        first_pair = np.concatenate([[True], lg[1:] != lg[:-1]])
        last_pair = np.concatenate([lg[1:] != lg[:-1], [True]])
        q[0::2][first_pair] = p0[first_pair]
        q[1::2][last_pair] = p1[last_pair]
        pts, leg = q, np.repeat(lg, 2)
    # ---- plan_drives: arc length per drive, resampled every ~STEP_M
    total = np.bincount(leg, minlength=L).astype(np.int64)
    t_l = total.tolist()
    pb = _bounds([sum(t_l[lb[g]:lb[g + 1]]) for g in range(G)])
    seg = np.hypot(*np.diff(pts, axis=0).T)
    seg[leg[1:] != leg[:-1]] = 0.0
    cum = np.empty(len(leg))
    for g in range(G):
        cum[pb[g]] = 0.0
        np.cumsum(seg[pb[g]:pb[g + 1] - 1], out=cum[pb[g] + 1:pb[g + 1]])
    first = np.flatnonzero(np.concatenate([[True], leg[1:] != leg[:-1]]))
    s_pts = cum - np.repeat(cum[first], np.diff(np.append(first, len(leg))))
    length = s_pts[first + total - 1]
    offset = np.empty(L)
    for g in range(G):
        offset[lb[g]] = 0.0
        np.cumsum(length[lb[g]:lb[g + 1] - 1] + 1.0, out=offset[lb[g] + 1:lb[g + 1]])
    g_pts = s_pts + offset[leg]
    count = np.maximum(2, np.ceil(length / STEP_M).astype(np.int64) + 1)
    start = _seg_starts(count)
    node_leg = np.repeat(np.arange(L), count)
    kk = _within(count)
    s = kk / (count - 1)[node_leg] * length[node_leg]
    c_l = count.tolist()
    nb = _bounds([sum(c_l[lb[g]:lb[g + 1]]) for g in range(G)])   # node ranges per device
    N = len(s)
    sg = s + offset[node_leg]
    x, y = np.empty(N), np.empty(N)
    for g in range(G):
        ns, ps = slice(nb[g], nb[g + 1]), slice(pb[g], pb[g + 1])
        x[ns] = np.interp(sg[ns], g_pts[ps], pts[ps, 0])
        y[ns] = np.interp(sg[ns], g_pts[ps], pts[ps, 1])
    is_last = kk == (count - 1)[node_leg]
    is_first = kk == 0
    dx, dy = np.diff(x), np.diff(y)
    h = np.arctan2(dx, dy)
    head_rad = np.empty(N)
    head_rad[:-1] = h
    head_rad[is_last] = head_rad[np.flatnonzero(is_last) - 1]
    ds = np.zeros(N)
    ds[1:] = np.diff(s)
    ds[is_first] = 0.0
    d_end = np.minimum(s, length[node_leg] - s)
    fast = 13.9 + (27.0 - 13.9) * np.clip((d_end - 1500.0) / 3000.0, 0.0, 1.0)
    factor = (np.concatenate(factor) if G > 1 else factor[0])[node_leg]
    ph = np.concatenate(ph, axis=1) if G > 1 else ph[0]
    wob = np.sin(s / 700.0 + ph[0][node_leg]) * np.sin(s / 2300.0 + ph[1][node_leg])
    vc = np.clip(fast * factor * (1.0 + 0.08 * wob), 3.0, V_MAX)
    turn = np.zeros(N)
    turn[1:] = np.abs((head_rad[1:] - head_rad[:-1] + np.pi) % (2 * np.pi) - np.pi)
    turn[is_first | is_last] = 0.0
    kappa = turn / STEP_M
    vlim = np.minimum(vc, np.maximum(np.sqrt(A_LAT / np.maximum(kappa, 1e-6)), 3.0))
    # Red lights / give-ways: about one per 1.5 km, never in the first or last 100 m.
    dwell = np.zeros(N)
    lam = length / 1500.0
    long_ = count > 12
    for g, (rng, *_rest) in enumerate(jobs):
        ls = slice(lb[g], lb[g + 1])
        lights = rng.poisson(lam[ls]) * long_[ls]
        if lights.sum():
            lleg = np.repeat(np.arange(lb[g], lb[g + 1]), lights)
            idx = start[lleg] + 5 + (rng.random(len(lleg)) * (count[lleg] - 10)).astype(np.int64)
            vlim[idx] = 0.0
            dwell[idx] = rng.uniform(5.0, 45.0, len(idx))
    vlim[is_first | is_last] = 0.0
    # Acceleration and braking limits, reset per drive: v_i^2 <= min_j<=i (v_j^2 + 2a(s_i - s_j)).
    big = 1e7 * (node_leg - np.repeat(np.asarray(lb[:-1]), [nb[g + 1] - nb[g] for g in range(G)]))
    v2 = vlim ** 2
    acc = v2 - 2 * A_ACC * s - big
    for g in range(G):
        ns = slice(nb[g], nb[g + 1])
        acc[ns] = np.minimum.accumulate(acc[ns])
    v2 = np.minimum(v2, acc + 2 * A_ACC * s + big)
    acc = v2 + 2 * A_DEC * s + big
    for g in range(G):
        ns = slice(nb[g], nb[g + 1])
        acc[ns] = np.minimum.accumulate(acc[ns][::-1])[::-1]
    v2 = np.minimum(v2, acc - 2 * A_DEC * s - big)
    v = np.sqrt(np.maximum(v2, 0.0))
    vm = np.empty(N)
    vm[1:] = np.maximum(0.5 * (v[1:] + v[:-1]), 0.3)
    vm[0] = 1.0
    dt = ds / vm
    step = dt.copy()
    step[1:] += dwell[:-1]
    step[is_first] = 0.0
    c = np.empty(N)
    for g in range(G):
        np.cumsum(step[nb[g]:nb[g + 1]], out=c[nb[g]:nb[g + 1]])
    arrive = c - np.repeat(c[start], count)
    duration = arrive[start + count - 1]
    head = np.rint(np.degrees(head_rad)).astype(np.int64) % 360
    if G == 1:
        return [Drives(start, count, s, x, y, v, head, arrive, dwell, length, duration)]
    out = []
    for g in range(G):
        ls, ns = slice(lb[g], lb[g + 1]), slice(nb[g], nb[g + 1])
        out.append(Drives(start[ls] - nb[g], count[ls], s[ns], x[ns], y[ns], v[ns], head[ns],
                          arrive[ns], dwell[ns], length[ls], duration[ls]))
    return out


# -------------------------------------------------------------------------- day plan
class DayPlanner:
    """Builds one device-day Track. Stateless apart from the DeviceState it is given.

    Three passes: the itinerary (where the vehicle goes, who drives; scalar draws), every
    drive of the day at once (plan_drives), then the timeline: events and parking in
    order, and the drive samples interpolated for all drives together.
    """

    def __init__(self, fleet: Fleet, veh: Vehicle):
        self.fleet = fleet
        self.veh = veh
        self.tenant = fleet.tenant(veh.tenant)
        self.home = (float(fleet.drivers[veh.primary].home_xy[0]), float(fleet.drivers[veh.primary].home_xy[1]))
        self.depot = (0.0, 0.0)

    # -- pass 1: itinerary ---------------------------------------------------------
    def _itinerary(self, rng: np.random.Generator, day_t0: int, state: DeviceState) -> list[tuple]:
        veh = self.veh
        off = self.tenant.utc_offset_h
        local = lambda h: day_t0 + (h - off) * 3600.0
        weekday = (day_t0 // DAY_S + 3) % 7           # 0 = Monday (1970-01-01 was a Thursday)
        primary = self.fleet.drivers[veh.primary]
        garage = primary.garage
        workday = weekday < 5 or (weekday == 5 and rng.random() < 0.2)
        if workday and rng.random() < 0.04:
            workday = False                              # sick day / vehicle in the workshop
        steps: list[tuple] = []
        here = (state.x, state.y)

        def leg(dest, drv):
            nonlocal here
            steps.append(("leg", here, tuple(dest), drv))
            here = tuple(dest)

        def private_trip(drv):
            r, a = rng.uniform(1500, 9000), rng.uniform(0, 2 * math.pi)
            base = here
            steps.append(("private", 1))
            leg((base[0] + r * math.cos(a), base[1] + r * math.sin(a)), drv)
            steps.append(("park_for", rng.uniform(1200, 5400), False))
            leg(base, drv)
            steps.append(("private", 0))

        if workday:
            steps.append(("park_until", local(rng.uniform(6.5, 8.5)), garage))
            leg(self.depot, veh.primary)
            steps.append(("park_for", rng.uniform(600, 1800), False))
            n_jobs = int(rng.integers(2, 6))
            shift = veh.primary
            switch_at = n_jobs // 2 if veh.secondary is not None else -1
            for j in range(n_jobs):
                if j == switch_at:
                    leg(self.depot, shift)                # hand over at the depot
                    steps.append(("park_for", rng.uniform(900, 1800), False))
                    shift = veh.secondary
                r, a = rng.uniform(2000, 22000), rng.uniform(0, 2 * math.pi)
                leg((r * math.cos(a), r * math.sin(a)), shift)
                steps.append(("park_for", rng.uniform(600, 3000), False))
            leg(self.depot, shift)
            steps.append(("park_for", rng.uniform(600, 1200), False))
            leg(self.home, veh.primary)
            if primary.private_mode and rng.random() < 0.4:
                steps.append(("park_until", local(rng.uniform(19.0, 20.5)), garage))
                private_trip(veh.primary)
        elif primary.private_mode and rng.random() < 0.35:
            steps.append(("park_until", local(rng.uniform(10.0, 15.0)), garage))
            private_trip(veh.primary)
        steps.append(("park_until", day_t0 + DAY_S, garage))
        return steps

    # -- pass 3: timeline ----------------------------------------------------------
    def plan(self, rng: np.random.Generator, day_t0: int, state: DeviceState) -> Track:
        job = self.begin(rng, day_t0, state)
        return self.complete(rng, state, plan_drives(*job) if job else None)

    def begin(self, rng: np.random.Generator, day_t0: int, state: DeviceState):
        """Pass 1 (the itinerary): plan_drives' arguments for the day's legs, or None.
        The caller plans the drives (plan_drives, or plan_drives_many over several
        devices) and hands them to complete() with the same generator."""
        self._cols, self._st = _Cols(state.t_last), state
        self._t = float(max(day_t0, state.t_last))   # time up to which records exist
        self._drv, self._priv = -1, 0
        self._steps = steps = self._itinerary(rng, day_t0, state)
        legs = [s for s in steps if s[0] == "leg"]
        if not legs:
            return None
        return (rng, np.array([s[1] for s in legs], dtype=float),
                np.array([s[2] for s in legs], dtype=float), self.tenant.road_theta)

    def complete(self, rng: np.random.Generator, state: DeviceState, dr: "Drives | None") -> Track:
        """Passes 2-3 after begin(): the timeline around the planned drives."""
        veh = self.veh
        steps, self._steps = self._steps, None
        legs = dr is not None
        go, drvs, privs, odo0, nofix = [], [], [], [], []
        li = 0
        P, phase = veh.move_period_s, veh.phase_s
        for st in steps:
            kind = st[0]
            if kind == "park_until":
                self._park_until(st[1], garage=st[2])
            elif kind == "park_for":
                self._park_until(self._t + st[1], garage=st[2])
            elif kind == "private":
                self._event(self._t + 1, EV_PRIVATE, priv=st[1])
            else:  # leg: ignition on, driver key, warm-up, drive, stop, ignition off
                _, _, dest, drv = st
                self._drv = -1
                self._event(self._t, EV_IGNITION, ign=1)
                self._drv = drv
                self._event(self._t + rng.uniform(2, 8), EV_DRIVER, ign=1)
                self._event(self._t + rng.uniform(20, 90), EV_MOVEMENT, ign=1, mov=1)
                t_go, dur = self._t, float(dr.duration[li])
                first = phase + P * math.floor((t_go - phase) / P + 1)
                n = max(0, math.ceil((t_go + dur - first) / P))
                if n > 6 and rng.random() < 0.12:      # tunnel / urban canyon: no fix
                    i0 = int(rng.integers(1, n - 3))
                    nofix.append((li, i0, int(rng.integers(2, max(3, min(n - i0, 20))))))
                go.append(t_go)
                drvs.append(drv)
                privs.append(self._priv)
                odo0.append(state.odo_m)
                state.x, state.y = dest
                state.odo_m += float(dr.length[li])
                last_node = dr.start[li] + dr.count[li] - 1
                state.heading = int(dr.head[last_node])
                self._t = t_go + dur
                self._event(self._t, EV_MOVEMENT, ign=1, mov=0)
                self._event(self._t + rng.uniform(5, 60), EV_IGNITION, ign=0)
                self._drv = -1
                li += 1
        if legs:
            self._samples(dr, np.array(go), drvs, privs, np.array(odo0), nofix)
        return self._finish()

    def _samples(self, dr: Drives, go: np.ndarray, drvs, privs, odo0: np.ndarray, nofix) -> None:
        """Periodic records of every drive of the day, interpolated in one go."""
        P, phase = self.veh.move_period_s, self.veh.phase_s
        end = go + dr.duration
        first = phase + P * np.floor((go - phase) / P + 1)
        n = np.maximum(0, np.ceil((end - first) / P)).astype(np.int64)
        if not n.sum():
            return
        ts = (np.repeat(first, n) + _within(n) * P).astype(np.int64)
        # Absolute node times, doubled for dwells: arrive, depart, arrive, depart, ...
        t_arr = dr.arrive + np.repeat(go, dr.count)
        tt = np.empty(2 * len(t_arr))
        tt[0::2], tt[1::2] = t_arr, t_arr + dr.dwell
        rep2 = lambda a: np.repeat(a, 2)
        x = np.interp(ts, tt, rep2(dr.x))
        y = np.interp(ts, tt, rep2(dr.y))
        speed = np.interp(ts, tt, rep2(dr.v)) * 3.6
        odo = np.interp(ts, tt, rep2(dr.s + np.repeat(odo0, dr.count)))
        node = (np.searchsorted(tt, ts, side="right") - 1) // 2
        angle = dr.head[node]
        fix = np.ones(len(ts), dtype=bool)
        starts = _seg_starts(n)
        for li, i0, k in nofix:
            fix[starts[li] + i0:starts[li] + min(i0 + k, n[li])] = False
        self._cols.add(ts, x, y, speed, angle, 1, 1, fix, EV_NONE,
                       np.repeat(np.asarray(drvs, dtype=np.int32), n),
                       np.repeat(np.asarray(privs, dtype=np.int8), n), odo)

    # -- pieces --------------------------------------------------------------------
    def _event(self, t: float, ev: int, *, ign: int = 0, mov: int = 0, priv: int | None = None) -> None:
        st = self._st
        if priv is not None:
            self._priv = priv
        ti = int(math.ceil(t))
        if ti <= self._cols.last_t:
            ti = self._cols.last_t + 1
        self._cols.add((ti,), st.x, st.y, 0.0, st.heading if mov else 0, ign, mov, True, ev,
                       self._drv if ign else -1, self._priv, st.odo_m)
        self._t = float(ti)

    def _park_until(self, t_end: float, *, garage: bool = False) -> None:
        """Parked, ignition off, records every stop period up to t_end."""
        veh, st = self.veh, self._st
        t0 = max(self._t, float(self._cols.last_t))
        p = veh.stop_period_s
        first = veh.phase_s + p * math.floor((t0 - veh.phase_s) / p + 1)
        if first < t_end:
            ts = np.arange(first, t_end, p, dtype=np.int64)
            self._cols.add(ts, st.x, st.y, 0.0, 0, 0, 0, not garage, EV_NONE, -1, self._priv, st.odo_m)
        self._t = max(self._t, t_end)

    def _finish(self) -> Track:
        cols = self._cols.arrays()
        order = np.argsort(cols["t"], kind="stable")
        tr = Track(**{k: v[order] for k, v in cols.items()})
        assert len(tr.t) < 2 or bool(np.all(np.diff(tr.t) > 0)), "track times must increase"
        if len(tr.t):
            self._st.t_last = int(tr.t[-1])
        return tr

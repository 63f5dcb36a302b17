"""Properties of the vectorised drive planner, for any start/end points and seeds."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetcloak.simulator.trips import V_MAX, plan_drives

coord = st.floats(-30_000, 30_000, allow_nan=False)
point = st.tuples(coord, coord)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(point, point), min_size=1, max_size=8), st.integers(0, 2**32 - 1),
       st.floats(0, 3.14))
def test_drives_start_and_end_where_asked_and_stay_physical(pairs, seed, theta):
    a = np.array([p for p, _ in pairs], dtype=float)
    b = np.array([q for _, q in pairs], dtype=float)
    d = plan_drives(np.random.default_rng(seed), a, b, theta)
    assert len(d.count) == len(pairs)
    for k in range(len(pairs)):
        i, n = d.start[k], d.count[k]
        assert np.allclose([d.x[i], d.y[i]], a[k], atol=1e-6)
        assert np.allclose([d.x[i + n - 1], d.y[i + n - 1]], b[k], atol=1e-6)
        v, arr, s = d.v[i:i + n], d.arrive[i:i + n], d.s[i:i + n]
        assert v[0] == 0 and v[-1] == 0 and (v <= V_MAX + 1e-9).all() and (v >= 0).all()
        assert (np.diff(arr) >= 0).all() and arr[0] == 0 and d.duration[k] == arr[-1]
        # never faster than the speed limit on average, and a road is at least as long as the crow flies
        assert d.length[k] >= np.hypot(*(b[k] - a[k])) - 1e-6
        if d.length[k] > 0:
            assert d.length[k] / max(d.duration[k], 1e-9) <= V_MAX + 1e-9
        # consecutive nodes are at most one step apart: no teleporting
        assert (np.hypot(np.diff(d.x[i:i + n]), np.diff(d.y[i:i + n])) <= 80.0 + 1e-6).all()
        assert (np.diff(s) >= 0).all()

"""Grid and H3 coarsening, time/speed/heading buckets."""
from __future__ import annotations

import h3
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fleetcloak.anonymize.coarsen import (
    bucket,
    grid_cells,
    h3_cells,
    h3_centres,
    h3_strings,
    haversine_m,
    round_to,
    snap_to_grid,
    truncate_time,
)

lats = st.floats(min_value=-90, max_value=90, allow_nan=False)
lons = st.floats(min_value=-180, max_value=180, allow_nan=False)
cells_m = st.sampled_from([10.0, 100.0, 250.0, 1000.0, 5000.0, 100_000.0])


@settings(max_examples=200, deadline=None)
@given(lat=arrays(np.float64, 50, elements=lats), lon=arrays(np.float64, 50, elements=lons), cell=cells_m)
def test_grid_centre_within_cell_size_everywhere(lat, lon, cell):
    clat, clon = snap_to_grid(lat, lon, cell)
    assert np.all(haversine_m(lat, lon, clat, clon) <= cell)
    # the output is a cell centre: snapping it again gives itself, and the same cell
    c2lat, c2lon = snap_to_grid(clat, clon, cell)
    assert np.allclose(c2lat, clat, atol=1e-9) and np.allclose(c2lon, clon, atol=1e-9)
    assert np.array_equal(grid_cells(lat, lon, cell), grid_cells(clat, clon, cell))


def test_grid_edge_cases():
    lat = np.array([90.0, -90.0, 89.99999, -89.99999, 0.0, 0.0, -0.0000001, 60.0, 60.0])
    lon = np.array([180.0, -180.0, 179.99999, -179.99999, 180.0, -180.0, 0.0, 179.9999999, -179.9999999])
    for cell in (250.0, 1000.0):
        clat, clon = snap_to_grid(lat, lon, cell)
        assert np.all(np.abs(clat) <= 90) and np.all(np.abs(clon) <= 180)
        assert np.all(haversine_m(lat, lon, clat, clon) <= cell)
    # lon 180 and -180 are one place: one cell
    ids = grid_cells(lat, lon, 1000.0)
    assert ids[4] == ids[5]
    # NaN stays NaN and gets no cell
    clat, clon = snap_to_grid(np.array([np.nan]), np.array([1.0]), 250.0)
    assert np.isnan(clat[0]) and grid_cells(np.array([np.nan]), np.array([1.0]), 250.0)[0] == -1


def test_grid_cells_are_roughly_square_in_metres():
    for lat0 in (0.0, 45.0, 70.0, -60.0):
        lat = np.full(2000, lat0) + np.linspace(0, 0.2, 2000)
        lon = np.linspace(10, 10.5, 2000)
        ids = np.unique(grid_cells(lat, lon, 1000.0))
        assert ids.size > 20


@settings(max_examples=50, deadline=None)
@given(lat=arrays(np.float64, 20, elements=st.floats(-85, 85)), lon=arrays(np.float64, 20, elements=lons),
       res=st.integers(4, 9))
def test_h3_cells_and_centres_match_the_h3_api(lat, lon, res):
    cells = h3_cells(lat, lon, res)
    strs = h3_strings(cells)
    clat, clon = h3_centres(cells)
    for i in range(lat.size):
        expect = h3.latlng_to_cell(lat[i], lon[i], res)
        assert strs[i] == expect
        elat, elon = h3.cell_to_latlng(expect)
        assert np.isclose(clat[i], elat) and np.isclose(clon[i], elon)
        # the centre is within the cell's circumradius (edge length * ~1.2) of the point
        assert haversine_m(lat[i], lon[i], clat[i], clon[i]) <= 1.3 * h3.average_hexagon_edge_length(res, "m") * 2


def test_time_speed_heading_altitude():
    ts = np.array([1_795_000_123_456, 1_795_000_000_000], dtype=np.int64)
    assert truncate_time(ts, 900).tolist() == [1_794_999_600_000, 1_794_999_600_000]
    assert bucket(np.array([0, 9, 10, 57, 130]), 10).tolist() == [0, 0, 10, 50, 130]
    assert (np.mod(round_to(np.array([0, 22, 23, 359, 180]), 45), 360)).tolist() == [0, 0, 45, 0, 180]
    assert round_to(np.array([149, 151, -40]), 100).tolist() == [100, 200, -0.0]


def test_h3_cells_with_repeated_and_missing_points_equal_one_call_per_point():
    import h3

    from fleetcloak.anonymize.coarsen import h3_cells

    rng = np.random.default_rng(5)
    lat = np.repeat(52.0 + rng.random(40) * 0.1, rng.integers(1, 4, 40))  # parked runs
    lon = 13.0 + np.round(lat * 7 % 1, 3) * 0.1
    lat = np.concatenate([lat, lat[:5]])  # a repeat that is not adjacent
    lon = np.concatenate([lon, lon[:5]])
    lat[[3, 17]] = np.nan
    got = h3_cells(lat, lon, 8)
    want = [0 if np.isnan(a) or np.isnan(b) else h3.str_to_int(h3.latlng_to_cell(a, b, 8)) for a, b in zip(lat, lon)]
    assert got.dtype == np.uint64 and got.tolist() == want

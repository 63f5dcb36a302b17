"""Location and time coarsening, vectorised over numpy columns.

Metric grid ("lat-band grid"): the sphere (R = 6,371,008.8 m) is cut into latitude
bands of equal height `dlat` = 90/N degrees with N = ceil(90 deg / cell) (so no band is
taller than the cell and the bands tile -90..90 exactly, symmetric about the equator).
Band i covers [i*dlat, (i+1)*dlat). Each band is cut into n_i equal longitude slices,
with n_i = ceil(circumference of the band's equator-side edge / cell): no slice is
wider than the cell anywhere in the band. So every cell is at most cell x cell metres
and the cell centre is within cell/sqrt(2) of any point of the cell -- at every
latitude, on both sides of the equator and of the antimeridian. Web Mercator was not
used: its cells shrink to nothing in metres towards the poles and it stops at 85 deg.

Points are snapped to their cell's centre. NaN stays NaN. The (band, slice) pair is a
stable cell id for grouping (`grid_cells`).

H3 (analytics): `h3_cells` / `h3_centres` use the h3 4 API; h3 has no vectorised
latlng_to_cell, so the per-point call runs once per run of equal consecutive points.
"""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0


def _grid(lat: np.ndarray, lon: np.ndarray, cell_m: float):
    if cell_m <= 0:
        raise ValueError("cell size must be positive")
    nbands = max(1, math.ceil(90.0 * M_PER_DEG / cell_m))  # bands per hemisphere
    dlat = 90.0 / nbands
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    band = np.floor(lat / dlat)
    band = np.clip(band, -nbands, nbands - 1)  # lat = 90 belongs to the last band
    # latitude of the band's edge nearest the equator: where the band is widest
    edge = np.where(band >= 0, band, -band - 1) * dlat
    nslices = np.maximum(1.0, np.ceil(360.0 * M_PER_DEG * np.cos(np.radians(edge)) / cell_m))
    width = 360.0 / nslices
    lon_n = np.where(lon >= 180.0, lon - 360.0, lon)  # 180 is -180
    sl = np.floor((lon_n + 180.0) / width)
    sl = np.clip(sl, 0, nslices - 1)
    return band, sl, dlat, width


def snap_to_grid(lat: np.ndarray, lon: np.ndarray, cell_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Each point replaced by the centre of its grid cell (arrays of degrees)."""
    band, sl, dlat, width = _grid(lat, lon, cell_m)
    clat = (band + 0.5) * dlat
    clon = (sl + 0.5) * width - 180.0
    return clat, clon


def grid_cells(lat: np.ndarray, lon: np.ndarray, cell_m: float) -> np.ndarray:
    """A stable int64 cell id per point: band * 2^32 + slice (NaN -> -1)."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    ok = ~(np.isnan(lat) | np.isnan(lon))
    band, sl, _, _ = _grid(np.where(ok, lat, 0.0), np.where(ok, lon, 0.0), cell_m)
    ids = (band.astype(np.int64) << 32) + sl.astype(np.int64)
    return np.where(ok, ids, -1)


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


# --- H3 ----------------------------------------------------------------------------
def h3_cells(lat: np.ndarray, lon: np.ndarray, resolution: int) -> np.ndarray:
    """H3 cell per point as uint64 (0 where lat/lon is NaN), one h3 call per run of equal
    consecutive points."""
    from itertools import repeat

    from h3 import _cy  # the compiled call the h3.api wrappers make (they add a Python frame per point)

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    out = np.zeros(lat.shape[0], dtype=np.uint64)
    ok = ~(np.isnan(lat) | np.isnan(lon))
    if not ok.any():
        return out
    # one call per run of equal consecutive points (a parked device repeats its position
    # in adjacent records): a sort to find every repeat cost more than the calls it saved
    la, lo = lat[ok], lon[ok]
    head = np.ones(la.shape[0], dtype=bool)
    head[1:] = (la[1:] != la[:-1]) | (lo[1:] != lo[:-1])
    heads = np.flatnonzero(head)
    cells = np.fromiter(map(_cy.latlng_to_cell, la[heads].tolist(), lo[heads].tolist(), repeat(int(resolution))),
                        dtype=np.uint64, count=heads.shape[0])
    out[ok] = cells[np.cumsum(head) - 1]
    return out


def h3_centres(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (lat, lon) of each H3 cell (uint64); NaN for 0. One call per distinct cell."""
    import h3.api.numpy_int as h3i

    cells = np.asarray(cells, dtype=np.uint64)
    lat = np.full(cells.shape[0], np.nan)
    lon = np.full(cells.shape[0], np.nan)
    ok = cells != 0
    if ok.any():
        uniq, inv = np.unique(cells[ok], return_inverse=True)
        centres = np.array(list(map(h3i.cell_to_latlng, uniq.tolist())), dtype=np.float64)
        lat[ok] = centres[inv, 0]
        lon[ok] = centres[inv, 1]
    return lat, lon


def h3_strings(cells: np.ndarray) -> np.ndarray:
    """H3 cells as their usual 15-hex-digit strings (None for 0)."""
    cells = np.asarray(cells, dtype=np.uint64)
    uniq, inv = np.unique(cells, return_inverse=True)  # one string per distinct cell
    labels = np.empty(uniq.shape[0], dtype=object)
    labels[:] = [format(c, "x") if c else None for c in uniq.tolist()]
    return labels[inv.reshape(-1)]


# --- time, speed, heading, altitude ---------------------------------------------------
def truncate_time(timestamps_ms: np.ndarray, period_s: int) -> np.ndarray:
    """Timestamps (ms) truncated to the start of their UTC period."""
    p = int(period_s) * 1000
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    return ts - np.mod(ts, p)


def bucket(values: np.ndarray, size: float) -> np.ndarray:
    """Lower edge of the bucket of each value (speed 57 km/h, size 10 -> 50)."""
    v = np.asarray(values)
    return (np.floor_divide(v, size) * size).astype(v.dtype, copy=False)


def round_to(values: np.ndarray, step: float) -> np.ndarray:
    """Nearest multiple of `step` (altitude to 100 m, heading to 45 deg, 360 -> 0)."""
    v = np.asarray(values, dtype=np.float64)
    return np.round(v / step) * step

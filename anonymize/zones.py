"""Privacy zones: which records lie inside a tenant's polygons, vectorised.

`ZoneIndex.locate(lat, lon)` returns, per point, the index of the first zone that holds
it (boundary included: a point on the edge counts as inside) or -1. Cheap path first:
the points sorted by longitude once, each zone's bounding box picks its few candidates
by binary search and a latitude test, and only those go to shapely 2's
`intersects_xy` on prepared geometries, in one vectorised call. The same path serves
a few zones and thousands (an STRtree query needs a shapely Point per candidate, which
cost more than the tests; an all-pairs bounding-box test grew with points x zones).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely


_MAX_PAIRS = 1 << 21  # (point, zone) candidate pairs per numpy pass


def _groups_of_at_most(counts: np.ndarray, limit: int):
    """Consecutive zone indexes in groups whose counts sum to at most `limit` (a single
    zone over the limit makes a group of its own)."""
    start, acc = 0, 0
    for z, c in enumerate(counts.tolist()):
        if acc and acc + c > limit:
            yield np.arange(start, z)
            start, acc = z, 0
        acc += c
    if start < len(counts):
        yield np.arange(start, len(counts))


class ZoneIndex:
    def __init__(
        self,
        geometries: Sequence,
        names: Sequence[str] | None = None,
        replacements: Sequence[tuple[float, float] | None] | None = None,
    ):
        self.geoms = [g if hasattr(g, "geom_type") else shapely.geometry.shape(g) for g in geometries]
        for g in self.geoms:
            shapely.prepare(g)
        self.names = list(names) if names is not None else [f"zone-{i}" for i in range(len(self.geoms))]
        self.replacements = list(replacements) if replacements is not None else [None] * len(self.geoms)
        self._geom_array = np.array(self.geoms, dtype=object)
        self.bounds = shapely.bounds(self._geom_array) if self.geoms else np.zeros((0, 4))
        if self.geoms:
            self.extent = (self.bounds[:, 0].min(), self.bounds[:, 1].min(), self.bounds[:, 2].max(), self.bounds[:, 3].max())
        # replacement points as arrays, NaN where the zone just removes the position
        self.replace_lon = np.array([r[0] if r else np.nan for r in self.replacements], dtype=np.float64)
        self.replace_lat = np.array([r[1] if r else np.nan for r in self.replacements], dtype=np.float64)

    @classmethod
    def from_policy(cls, zones: Sequence, **kw) -> ZoneIndex:
        """From policy.PrivacyZone models."""
        return cls([z.shape for z in zones], [z.name for z in zones], [z.replace_with for z in zones], **kw)

    def __len__(self) -> int:
        return len(self.geoms)

    def __repr__(self) -> str:
        return f"ZoneIndex({len(self.geoms)} zones)"

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Index of the (first) zone holding each point, -1 outside every zone or NaN."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        out = np.full(lat.shape[0], -1, dtype=np.int32)
        if not self.geoms or lat.size == 0:
            return out
        x0, y0, x1, y1 = self.extent
        cand = np.flatnonzero((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1))
        if cand.size == 0:
            return out
        cx, cy = lon[cand], lat[cand]
        # (point, zone) pairs whose bounding boxes match, without an all-pairs test: the
        # points sorted by longitude once, each zone's longitude band found by binary
        # search, the bands' latitudes tested in one pass; then one vectorised exact test
        # over the pairs left (shapely 2, prepared geometries, no Point objects).
        order = np.argsort(cx, kind="stable")
        sx = cx[order]
        b = self.bounds
        lo = np.searchsorted(sx, b[:, 0], side="left")
        cnt = np.maximum(np.searchsorted(sx, b[:, 2], side="right") - lo, 0)
        found = np.full(cand.shape[0], -1, dtype=np.int32)
        for zs in _groups_of_at_most(cnt, _MAX_PAIRS):
            n = cnt[zs]
            total = int(n.sum())
            if not total:
                continue
            zi = np.repeat(zs, n)
            pos = np.repeat(lo[zs] - (np.cumsum(n) - n), n) + np.arange(total)
            pi = order[pos]
            y = cy[pi]
            m = (y >= b[zi, 1]) & (y <= b[zi, 3])
            pi, zi = pi[m], zi[m]
            if not pi.size:
                continue
            hit = shapely.intersects_xy(self._geom_array[zi], cx[pi], cy[pi])
            pi, zi = pi[hit], zi[hit]
            # the first zone wins: assign in decreasing zone order, lower ones overwrite
            # (groups come in increasing zone order, so a lower group's hits already stand)
            desc = np.argsort(-zi, kind="stable")
            pi, zi = pi[desc], zi[desc]
            free = found[pi] < 0
            found[pi[free]] = zi[free]
        out[cand] = found
        return out

    def inside(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return self.locate(lat, lon) >= 0

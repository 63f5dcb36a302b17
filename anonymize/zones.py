"""Privacy zones: which records lie inside a tenant's polygons, vectorised.

`ZoneIndex.locate(lat, lon)` returns, per point, the index of the first zone that holds
it (boundary included: a point on the edge counts as inside) or -1. Cheap path first:
a numpy bounding-box test per zone picks the few candidate points, and only those go
to shapely 2's `intersects_xy` on a prepared geometry. With many zones
(> `tree_threshold`) the (point, zone) bounding-box pairs are found in one numpy pass
and each zone tests only its own candidates (an STRtree is still built, `self.tree`,
for callers that query it; querying it per batch meant a shapely Point per candidate,
which cost more than the tests).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely


class ZoneIndex:
    def __init__(
        self,
        geometries: Sequence,
        names: Sequence[str] | None = None,
        replacements: Sequence[tuple[float, float] | None] | None = None,
        *,
        tree_threshold: int = 32,
    ):
        self.geoms = [g if hasattr(g, "geom_type") else shapely.geometry.shape(g) for g in geometries]
        for g in self.geoms:
            shapely.prepare(g)
        self.names = list(names) if names is not None else [f"zone-{i}" for i in range(len(self.geoms))]
        self.replacements = list(replacements) if replacements is not None else [None] * len(self.geoms)
        self.bounds = shapely.bounds(np.array(self.geoms, dtype=object)) if self.geoms else np.zeros((0, 4))
        self.use_tree = len(self.geoms) > tree_threshold
        self.tree = shapely.STRtree(self.geoms) if self.use_tree else None
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
        return f"ZoneIndex({len(self.geoms)} zones{', STRtree' if self.use_tree else ''})"

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
        found = np.full(cand.shape[0], -1, dtype=np.int32)
        b = self.bounds
        if self.use_tree:
            # Many zones: (point, zone) pairs whose bounding boxes match, in one numpy pass
            # per chunk, then one exact test per zone on its few candidates (no shapely
            # Point objects: building them cost more than the test itself).
            nz = len(self.geoms)
            step = max(1, 1_000_000 // nz)
            pts, zs = [], []
            for s in range(0, cand.shape[0], step):
                x, y = cx[s:s + step, None], cy[s:s + step, None]
                pi, zi = np.nonzero((x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3]))
                pts.append(pi + s)
                zs.append(zi)
            pi, zi = np.concatenate(pts), np.concatenate(zs)
            if pi.size == 0:
                return out
            order = np.argsort(zi, kind="stable")
            pi, zi = pi[order], zi[order]
            bounds = np.flatnonzero(np.diff(zi)) + 1
            # reverse: lower zone indexes overwrite (the first zone wins)
            for seg in reversed(np.split(np.arange(pi.size), bounds)):
                z = int(zi[seg[0]])
                p = pi[seg]
                hit = shapely.intersects_xy(self.geoms[z], cx[p], cy[p])
                found[p[hit]] = z
            out[cand] = found
            return out
        for z in range(len(self.geoms) - 1, -1, -1):  # reverse: lower indexes overwrite
            m = (cx >= b[z, 0]) & (cx <= b[z, 2]) & (cy >= b[z, 1]) & (cy <= b[z, 3])
            if not m.any():
                continue
            sub = np.flatnonzero(m)
            hit = shapely.intersects_xy(self.geoms[z], cx[sub], cy[sub])
            found[sub[hit]] = z
        out[cand] = found
        return out

    def inside(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return self.locate(lat, lon) >= 0

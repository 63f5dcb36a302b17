"""Output records as JSON bytes, straight from the transforms' columns.

    values = processor_json(result, sub_batch, rows)   # tenant.<tenant>.telemetry
    values = controller_json(result)                    # analytics.telemetry

Each value is one JSON object, equal (after json.loads) to the dict the result's
`records()` gives for the same record -- the readable reference of the output contract
(schemas/) -- but built in C (`_render.c`) from numpy columns, without a Python dict per
record. Which IO elements a processor record carries (the tenant's IO filter, cell ids
stripped in private mode, identifiers replaced by their pseudonyms) is decided here with
numpy, per distinct IO id and per element; C only writes the bytes.
"""
from __future__ import annotations

import numpy as np

from ..codecs.iodict import CELL_IDS
from . import _render
from .transform import KEEP, OMIT, ControllerResult, ProcessorResult

_CELL_IDS = np.fromiter(sorted(CELL_IDS), dtype=np.int64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def _f64(col) -> np.ndarray:
    return np.ascontiguousarray(col, dtype=np.float64)


def _nullable_int(name: str, col) -> tuple:
    return (name, _render.K_F64INT, _f64(col))


def processor_json(res: ProcessorResult, batch, rows: np.ndarray | None = None) -> list[bytes]:
    """One JSON object per chosen record of `res` (rows: indexes, in this order; None:
    all). `batch`: the decoded batch `res` was computed from (row i of `res` is row i of
    `batch`), whose IO elements the records carry; None: records without "io"."""
    sel = None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    fields = [
        ("record_id", _render.K_OBJ, res.record_id.tolist()),
        ("tenant", _render.K_CONST, res.tenant),
        ("device", _render.K_OBJ, np.asarray(res.device).tolist()),
        ("driver", _render.K_OBJ, np.asarray(res.driver).tolist()),
        ("timestamp_ms", _render.K_I64, np.ascontiguousarray(res.timestamp_ms, dtype=np.int64)),
        ("lat", _render.K_F64, _f64(res.lat)),
        ("lon", _render.K_F64, _f64(res.lon)),
    ]
    for name in ("altitude", "angle", "speed", "satellites"):
        col = getattr(res, name)
        if col is not None:
            fields.append(_nullable_int(name, col))
    fields.append(("private", _render.K_BOOL, np.ascontiguousarray(res.private, dtype=bool)))
    fields.append(("location_suppressed", _render.K_OBJ, np.asarray(res.location_suppressed).tolist()))
    n = len(res) if sel is None else len(sel)
    io = None if batch is None else io_selection(batch, np.arange(len(res)) if sel is None else sel, res)
    return _render.records(n, fields, sel, io)


def controller_json(res: ControllerResult) -> list[bytes]:
    """One JSON object per record the analytics route keeps (res.keep), in order."""
    idx = np.flatnonzero(res.keep).astype(np.int64)
    fields = [
        ("record_id", _render.K_OBJ, res.record_id.tolist()),
        ("tenant", _render.K_CONST, res.tenant),
        ("device", _render.K_OBJ, res.device.tolist()),
        ("driver", _render.K_OBJ, res.driver.tolist()) if res.driver is not None else ("driver", _render.K_CONST, None),
        ("timestamp_ms", _render.K_I64, np.ascontiguousarray(res.timestamp_ms, dtype=np.int64)),
        ("lat", _render.K_F64, _f64(res.lat)),
        ("lon", _render.K_F64, _f64(res.lon)),
        ("cell", _render.K_OBJ, res.cell.tolist()),
        ("location_suppressed", _render.K_OBJ, res.location_suppressed.tolist()),
    ]
    fields += [_nullable_int(name, col) for name, col in res.fields.items()]
    return _render.records(len(idx), fields, idx, None)


def io_selection(batch, rows: np.ndarray, proc: ProcessorResult) -> tuple:
    """The `io` argument of _render.records for records `rows` of `batch` (and of
    `proc`): their kept elements, the replaced values, and the pseudonyms of multi-part
    identifiers whose first part is missing (ProcessorResult.record_io's rules)."""
    offs = batch.io_offsets
    starts, ends = offs[rows], offs[rows + 1]
    counts = ends - starts
    total = int(counts.sum())
    bounds = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    el = np.repeat(starts - bounds[:-1], counts) + np.arange(total)
    ids = batch.io_id[el]
    # the tenant's IO filter, per distinct id (ids are 16-bit: a lookup table, no sort)
    seen = np.zeros(int(ids.max()) + 1 if total else 1, dtype=bool)
    seen[ids] = True
    uniq = np.flatnonzero(seen)
    lut = np.zeros(seen.size, dtype=bool)
    lut[uniq] = [proc.io_keep(i) for i in uniq.tolist()]
    keep = lut[ids]
    local = None  # element -> its record's position among `rows`
    strip = proc.strip_io[rows]
    if strip.any():
        local = np.repeat(np.arange(len(rows)), counts)
        keep &= ~(strip[local] & np.isin(ids, _CELL_IDS))
    # identifier replacements: (element positions, values); OMIT un-keeps
    hits, reps_all = [], []
    for io_id, col in proc.io_replace.items():
        hit = np.flatnonzero((ids == io_id) & keep)
        if not hit.size:
            continue
        if local is None:
            local = np.repeat(np.arange(len(rows)), counts)
        reps = np.asarray(col, dtype=object)[rows[local[hit]]]
        omit = reps == OMIT   # object ==: identity for these sentinels, False for values
        if omit.any():
            keep[hit[omit]] = False
        sel = ~(omit | (reps == KEEP))
        if sel.any():
            hits.append(hit[sel])
            reps_all.append(reps[sel])
    # element positions among the kept ones
    if keep.all():
        kept_el, pos = el, None
        kept_bounds = bounds
    else:
        kel = np.flatnonzero(keep)
        kept_el = el[kel]
        pos = np.cumsum(keep) - 1
        if local is None:
            local = np.repeat(np.arange(len(rows)), counts)
        kept_bounds = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(np.bincount(local[kel], minlength=len(rows)), out=kept_bounds[1:])
    rep_pos, rep_val = _EMPTY_I64, []
    if hits:
        p = np.concatenate(hits)
        v = np.concatenate(reps_all)
        if pos is not None:
            p = pos[p]
        order = np.argsort(p, kind="stable")
        rep_pos = np.ascontiguousarray(p[order], dtype=np.int64)
        rep_val = v[order].tolist()
    extra_rows, extra_items = _multipart_extras(batch, rows, proc)
    return (np.ascontiguousarray(kept_el, dtype=np.int64), kept_bounds, batch.io_id, batch.io_width,
            batch.io_value, batch.io_nx_len, batch.nx_data, rep_pos, rep_val, extra_rows, extra_items)


def _multipart_extras(batch, rows: np.ndarray, proc: ProcessorResult) -> tuple[np.ndarray, list]:
    """A multi-part identifier whose first part is missing from a record but whose other
    parts are there: its pseudonym still goes out under the first id (record_io)."""
    if not proc.io_multipart:
        return _EMPTY_I64, []
    out: list[tuple[int, str, str]] = []
    for first, ids in proc.io_multipart.items():
        if not proc.io_keep(first):
            continue
        want = ~batch.io_present(first)[rows]
        others = np.zeros(len(rows), dtype=bool)
        for other in ids[1:]:
            others |= batch.io_present(other)[rows]
        for r in np.flatnonzero(want & others).tolist():
            v = proc.io_replace[first][rows[r]]
            if isinstance(v, str):
                out.append((r, str(first), v))
    if not out:
        return _EMPTY_I64, []
    out.sort(key=lambda t: t[0])
    return np.array([t[0] for t in out], dtype=np.int64), [(k, v) for _, k, v in out]

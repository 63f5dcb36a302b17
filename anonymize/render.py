"""Output records as JSON bytes, straight from the transforms' columns.

    values = processor_json(result, sub_batch, rows)   # tenant.<tenant>.telemetry
    values = controller_json(result)                    # analytics.telemetry

Each value is one JSON object, equal (after json.loads) to the dict the result's
`records()` gives for the same record -- the readable reference of the output contract
(schemas/) -- but built in C (`_render.c`) from numpy columns, without a Python dict per
record. Which IO elements a processor record carries (the tenant's IO filter, cell ids
stripped in private mode, identifiers replaced by their pseudonyms, the first part of a
multi-part identifier) follows ProcessorResult.record_io's rules; `io_spec` below lists
them and hands the C code what it needs to apply them element by element.
"""
from __future__ import annotations

import numpy as np

from ..codecs.iodict import CELL_IDS
from . import _render
from .transform import KEEP, OMIT, ControllerResult, ProcessorResult

_CELL_TABLE = np.zeros(65536, dtype=np.uint8)  # per IO id: 1 for a cell id
_CELL_TABLE[sorted(CELL_IDS)] = 1


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
    return _render.records(n, fields, sel, None if batch is None else io_spec(batch, res))


def packets_json(values: list[bytes], bounds: np.ndarray) -> list[bytes]:
    """The per-packet output mode's values: b'{"records":[' + b",".join(group) + b"]}"
    per group of `values`, group g being values[bounds[g]:bounds[g + 1]] (bounds: int64,
    non-decreasing, from 0 to len(values)), in one C call."""
    return _render.groups(values, np.ascontiguousarray(bounds, dtype=np.int64), b'{"records":[', b",", b"]}")


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


def io_spec(batch, proc: ProcessorResult) -> tuple:
    """The `io` argument of _render.records: the batch's IO elements and what
    ProcessorResult.record_io does to them, which the C code applies element by element:

    - an element passes the tenant's IO filter (proc.io_keep, asked once per distinct id),
    - a cell id (iodict.CELL_IDS) is left out of a record with proc.strip_io set,
    - an identifier's value is proc.io_replace[id][row]: KEEP keeps the element's own
      value, OMIT leaves the element out (the other parts of a multi-part identifier),
    - a multi-part identifier whose first part is missing from a record while another
      part is there still goes out under its first id, when its pseudonym is a str.
    """
    replace = {io_id: col.tolist() for io_id, col in proc.io_replace.items() if proc.io_keep(io_id)}
    multipart = [(first, tuple(ids[1:]), replace[first])
                 for first, ids in proc.io_multipart.items() if proc.io_keep(first)]
    return (batch.io_offsets, batch.io_id, batch.io_width, batch.io_value, batch.io_nx_len, batch.nx_data,
            proc.io_keep, _CELL_TABLE, np.ascontiguousarray(proc.strip_io, dtype=bool), replace, multipart,
            (KEEP, OMIT))

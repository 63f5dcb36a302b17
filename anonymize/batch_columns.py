"""From the codecs' `AvlBatch` (docs/decode_batch.md) to `transform.Columns`.

Duck-typed: it reads the batch's documented columns and accessors (timestamp_ms, lat,
lon, altitude, angle, satellites, speed, priority, event_io_id, io_offsets, io_id,
io_width, io_value, io_nx_len, nx_data, io_column, io_bytes) and imports nothing from
codecs, so the anonymize tests and the worker can feed it any object of that shape.

    rows = ...                                   # this tenant's rows of the batch
    sub = batch.select(rows)
    cols = columns_from_batch(sub, imeis[rows], family=families[rows],
                              io_ids=transform.io_ids_needed(set(families[rows])))
    result = transform.apply(cols)

Fixed-size values (raw8 identifiers such as iButton and RFID, flags, sensor values) come
as uint64 columns (0 = absent); identifiers whose canonical form is built from bytes
(multi-part ids, text) and NX values as per-record bytes or None, which the canonical
forms treat alike (canonical.py).
"""
from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import numpy as np

from ..codecs.iodict import identifier_groups
from . import _recordid
from .private_mode import PRIVATE_MODE_IO
from .record_id import RecordContents, pack_columns
from .transform import Columns

_ELEMENT = np.dtype([("id", ">u2"), ("width", "u1"), ("value", ">u8")])
# The columns _recordid.contents packs, in its argument order, with the dtypes it
# checks (decode_batch's; a duck-typed batch is cast as numpy assignment would).
_CONTENT_COLUMNS = (("timestamp_ms", np.uint64), ("priority", np.uint8), ("lon_raw", np.int32),
                    ("lat_raw", np.int32), ("altitude", np.int16), ("angle", np.uint16),
                    ("satellites", np.uint8), ("speed", np.uint16), ("event_io_id", np.uint16),
                    ("io_offsets", np.int64), ("io_id", np.uint16), ("io_width", np.uint8),
                    ("io_value", np.uint64), ("io_nx_len", np.uint16))


def _bytes_ids(families: Iterable[str]) -> set[int]:
    """Ids of identifiers whose canonical form is built from bytes (multi-part, NX, text)."""
    return {i for f in families for g in identifier_groups(f) if g.canonical != "raw8" for i in g.ids}


def columns_from_batch(batch, imei, *, family="FMB", io_ids: Iterable[int] = (), content: bool = True) -> Columns:
    """A `Columns` of every row of `batch`. `imei`: one per row (the Kafka key joined
    through frame_index), `family`: one for all rows or one per row, `io_ids`: the IO
    columns the transforms read (`ProcessorTransform.io_ids_needed`)."""
    fams = {family} if isinstance(family, str) else set(np.asarray(family).tolist())
    as_bytes = _bytes_ids(fams)
    ids = np.asarray(batch.io_id)
    nx = np.asarray(batch.io_width) == 0
    as_bytes |= set(np.unique(ids[nx]).tolist()) if nx.any() else set()
    io: dict[int, np.ndarray] = {}
    present = set(np.unique(ids).tolist())  # an absent id is an absent column
    for io_id in sorted((set(io_ids) | {PRIVATE_MODE_IO}) & present):
        if io_id not in as_bytes:  # fixed-size numbers (raw8 identifiers, flags, sensors)
            io[io_id] = batch.io_column(io_id, 0)
        else:
            col = np.empty(len(batch), dtype=object)
            col[:] = batch.io_bytes(io_id)
            io[io_id] = col
    return Columns(
        imei=np.asarray(imei),
        timestamp_ms=np.asarray(batch.timestamp_ms).astype(np.int64, copy=False),
        lat=batch.lat, lon=batch.lon, altitude=batch.altitude, angle=batch.angle,
        speed=batch.speed, satellites=batch.satellites, priority=batch.priority,
        event_io_id=batch.event_io_id, io=io, family=family,
        content=record_contents(batch) if content else None,
    )


def record_contents(batch) -> Sequence[bytes]:
    """Per record, a byte string of everything it carries (GPS element, priority, event
    id and every IO element with its width, NX bytes included) -- the `content` of its
    record_id. A device's retransmission of a record gives the same bytes, whichever
    packet and batch it arrives in (NX values are taken by content, not by their offset
    in the batch's nx_data).

    From a decoded batch (raw coordinates at hand): a `RecordContents` built in one C
    call (`_recordid.contents`; layout in _recordid.c: the fixed fields packed
    big-endian as on the wire, 26 bytes, then per IO element id u16, width u8, value u64
    -- an NX element's length as its value --, then the NX bytes). Otherwise a list of
    bytes starting with `pack_columns`' packing of the decoded columns."""
    if not hasattr(batch, "lat_raw"):
        return _packed_contents(batch)
    cols = [np.ascontiguousarray(getattr(batch, name)).astype(dtype, copy=False) for name, dtype in _CONTENT_COLUMNS]
    content, offsets = _recordid.contents(*cols, batch.nx_data)
    return RecordContents(content, np.frombuffer(offsets, dtype=np.int64))


def _packed_contents(batch) -> list[bytes]:
    """record_contents without raw coordinates: pack_columns, then the IO elements as
    `_ELEMENT`s and the NX bytes, as the C code lays them out after its fixed part."""
    n = len(batch)
    base = pack_columns(
        batch.timestamp_ms, batch.lat, batch.lon, priority=batch.priority, altitude=batch.altitude,
        angle=batch.angle, satellites=batch.satellites, speed=batch.speed, event_io_id=batch.event_io_id,
    )
    if n == 0:
        return base
    width = np.asarray(batch.io_width)
    value = np.asarray(batch.io_value).copy()
    nx = np.flatnonzero(width == 0)
    nx_len = np.asarray(batch.io_nx_len)
    value[nx] = nx_len[nx]  # NX: its length here, its bytes appended below
    el = np.empty(len(width), dtype=_ELEMENT)
    el["id"] = batch.io_id
    el["width"] = width
    el["value"] = value
    buf = el.tobytes()
    size = _ELEMENT.itemsize
    off = (np.asarray(batch.io_offsets) * size).tolist()
    out = list(map(operator.add, base, map(buf.__getitem__, map(slice, off[:-1], off[1:]))))
    if nx.size:
        rows = np.repeat(np.arange(n), np.diff(np.asarray(batch.io_offsets)))[nx].tolist()
        data = batch.nx_data
        starts = np.asarray(batch.io_value)[nx].tolist()
        lens = nx_len[nx].tolist()
        for r, s, ln in zip(rows, starts, lens):
            out[r] += data[s:s + ln]
    return out

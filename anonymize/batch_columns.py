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

from ..codecs.batch import elements_as_bytes
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
    wanted = np.array(sorted(set(io_ids) | {PRIVATE_MODE_IO}), dtype=np.int64)
    wanted = wanted[(wanted >= 0) & (wanted < 65536)]  # IO ids are u16
    ids = np.asarray(batch.io_id)
    # the wanted ids' elements, picked in one pass (not one pass over every element per id)
    lut = np.zeros(65536, dtype=bool)
    lut[wanted] = True
    sel = np.flatnonzero(lut[ids]) if ids.size else np.zeros(0, dtype=np.intp)
    sel_ids = ids[sel]
    io: dict[int, np.ndarray] = {}
    if sel.size:
        width = np.asarray(batch.io_width)[sel]
        as_bytes |= set(np.unique(sel_ids[width == 0]).tolist())  # an id sent NX anywhere
        order = np.argsort(sel_ids, kind="stable")  # each id's elements in batch order
        sorted_ids = sel_ids[order]
        heads = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
        bounds = heads.tolist() + [order.shape[0]]
        record = _io_record(batch)[sel]
        value = np.asarray(batch.io_value)[sel]
        nx_len = np.asarray(batch.io_nx_len)[sel]
        n = len(batch)
        for a, b in zip(bounds[:-1], bounds[1:]):  # an absent id is an absent column
            io_id = int(sorted_ids[a])
            el = order[a:b]
            if io_id not in as_bytes:  # fixed-size numbers (raw8 identifiers, flags, sensors)
                # as batch.io_column(io_id, 0): NX elements count as absent, the last wins
                el = el[width[el] != 0]
                col = np.zeros(n, dtype=np.uint64)
                col[record[el]] = value[el]
                io[io_id] = col
            else:  # as batch.io_bytes(io_id): NX bytes, or a fixed value's wire bytes
                io[io_id] = _bytes_column(n, record[el], width[el], value[el], nx_len[el], batch.nx_data)
    return Columns(
        imei=np.asarray(imei),
        timestamp_ms=np.asarray(batch.timestamp_ms).astype(np.int64, copy=False),
        lat=batch.lat, lon=batch.lon, altitude=batch.altitude, angle=batch.angle,
        speed=batch.speed, satellites=batch.satellites, priority=batch.priority,
        event_io_id=batch.event_io_id, io=io, family=family,
        content=record_contents(batch) if content else None,
    )


def _bytes_column(n: int, record: np.ndarray, width: np.ndarray, value: np.ndarray, nx_len: np.ndarray,
                  nx_data: bytes) -> np.ndarray:
    """An object column of one id's values as bytes (None where absent; the last
    element of a record wins), from that id's elements only: NX bytes, or a fixed value
    as `width` big-endian bytes (codecs.batch.elements_as_bytes, as AvlBatch.io_bytes).

    Fixed-size elements of one width, one per record at most (a decoded batch: its
    records hold no id twice): one bytes object per distinct value, shared by the records
    that carry it, so the identifier passes hash each distinct value once (a bytes object
    keeps its hash) and compare equal ones by identity. Card ids of the bench fleet:
    the processor's canonical pass ~2x faster."""
    if (record.shape[0] and width[0] != 0 and (width == width[0]).all()
            and (record.shape[0] == 1 or (record[1:] > record[:-1]).all())):
        uniq, inv = np.unique(value, return_inverse=True)
        w = int(width[0])
        shared = np.empty(uniq.shape[0], dtype=object)
        shared[:] = [v.to_bytes(w, "big") for v in uniq.tolist()]
        out = np.full(n, None, dtype=object)
        out[record] = shared[inv.reshape(-1)]
        return out
    col = elements_as_bytes(n, record, width, value, nx_len, nx_data)
    return np.fromiter(col, dtype=object, count=n)  # `out[:] = col` looks into each bytes: 4x slower


def _io_record(batch) -> np.ndarray:
    """The record of each IO element (the batch's own when it has it)."""
    rec = getattr(batch, "io_record", None)
    if rec is not None:
        return np.asarray(rec)
    counts = np.diff(np.asarray(batch.io_offsets))
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


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

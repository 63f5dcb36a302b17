"""Columnar decoding of many TCP AVL frames at once: the stream worker's hot path.

    decode_batch(frames, *, check_crc=True, cap=1280) -> AvlBatch

`frames` are whole TCP AVL data frames (preamble, length, codec 8 / 8E / 16, records,
Number of Data 2, CRC), e.g. the values of the `telematics.raw` topic; the IMEI is not in
them (it is the message key). The parsing is done by the C extension `_avlbatch` in one
pass per frame with the GIL released; this module allocates the output columns (views
into one numpy block sized from upper bounds on the byte counts, so the C code never
allocates them), calls it and wraps the result.

The checks are those of the strict per-frame decoder (`decode(frame)`), in the same
order, with the same reason codes and offsets, plus a cap on the declared frame size.
A bad frame never raises: it is listed in `AvlBatch.errors` and contributes no records,
and every other frame of the batch still decodes. Layout of the columns: docs/decode_batch.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _avlbatch
from .errors import DecodeError
from .packets import AvlPacket, AvlRecord

_avlbatch.set_decode_error(DecodeError)


def elements_as_bytes(n: int, record, width, value, nx_len, nx_data: bytes) -> list[bytes | None]:
    """n records' values of some IO elements as bytes (None for a record with none; the
    last element of a record wins): an NX element's bytes, a fixed one's value as `width`
    big-endian bytes. record/width/value/nx_len: the elements' io_record, io_width,
    io_value, io_nx_len. One C call (_avlbatch.bytes_column)."""
    return _avlbatch.bytes_column(n, np.ascontiguousarray(record, dtype=np.int64),
                                  np.ascontiguousarray(width, dtype=np.uint8),
                                  np.ascontiguousarray(value, dtype=np.uint64),
                                  np.ascontiguousarray(nx_len, dtype=np.uint16), nx_data)

DEFAULT_CAP = 1280  # largest whole AVL TCP frame most devices send (protocol notes 7)
_NO_CAP = 1 << 40  # above any declared length (u32 + 12)

# Record columns, in the order the C code takes their buffers.
_REC_COLUMNS = (
    ("frame_index", np.int32),       # which input frame the record came from
    ("timestamp_ms", np.uint64),     # ms since the Unix epoch (wire: unsigned 64)
    ("priority", np.uint8),          # 0..3
    ("lon_raw", np.int32),           # degrees x 1e7, as on the wire
    ("lat_raw", np.int32),
    ("lon", np.float64),             # lon_raw / 1e7, bit-identical to decode()'s
    ("lat", np.float64),
    ("altitude", np.int16),          # signed metres
    ("angle", np.uint16),
    ("satellites", np.uint8),
    ("speed", np.uint16),            # km/h
    ("event_io_id", np.uint16),
    ("generation_type", np.int16),   # Codec 16 only; -1 elsewhere
    ("codec", np.uint8),             # 8, 0x8E or 16 (per record, copied from its frame)
)
_IO_COLUMNS = (
    ("io_id", np.uint16),
    ("io_width", np.uint8),          # 1, 2, 4, 8; 0 = NX (bytes in nx_data)
    ("io_value", np.uint64),         # the value; for NX: its start offset in nx_data
    ("io_nx_len", np.uint16),        # NX length in bytes; 0 for fixed-size values
)
_FIELDS = tuple(n for n, _ in _REC_COLUMNS) + ("io_offsets",) + tuple(n for n, _ in _IO_COLUMNS)


class AvlBatch:
    """The records of a batch of frames, as columns.

    Per record (length `len(batch)`): the arrays named in `_REC_COLUMNS` plus
    `io_offsets` (length n+1): record i's IO elements are io_*[io_offsets[i]:io_offsets[i+1]],
    in wire order. Per IO element: io_id, io_width, io_value, io_nx_len; NX bytes live in
    `nx_data` (bytes). Per input frame (length `n_frames`): frame_ok (bool), frame_codec
    (uint8, 0 when the frame failed before its codec was checked), frame_records (int32;
    0 for a failed frame). `errors` lists (frame_index, DecodeError) for the failed frames.
    """

    __slots__ = _FIELDS + ("nx_data", "frame_ok", "frame_codec", "frame_records", "errors",
                           "_io_record")

    def __len__(self) -> int:
        return len(self.timestamp_ms)

    def __repr__(self) -> str:
        return (f"<AvlBatch {len(self)} records, {len(self.io_id)} IO elements, "
                f"{self.n_frames} frames, {len(self.errors)} failed>")

    @property
    def n_frames(self) -> int:
        return len(self.frame_ok)

    @property
    def frame_offsets(self) -> np.ndarray:
        """int64, length n_frames+1: frame k's records are rows frame_offsets[k]:[k+1]
        (before any select())."""
        out = np.zeros(self.n_frames + 1, dtype=np.int64)
        np.cumsum(self.frame_records, out=out[1:])
        return out

    @property
    def io_record(self) -> np.ndarray:
        """int64 per IO element: the row it belongs to (computed once, on demand)."""
        if self._io_record is None:
            self._io_record = np.repeat(np.arange(len(self), dtype=np.int64),
                                        np.diff(self.io_offsets))
        return self._io_record

    # ------------------------------------------------------------------ IO access

    def io_column(self, io_id: int, default=0, dtype=None) -> np.ndarray:
        """The fixed-size value of IO `io_id` in every record; `default` where absent.

        Vectorised (one pass over the IO elements). dtype defaults to uint64 for a
        non-negative int default, else float64 (e.g. default=np.nan) or int64 (negative
        int; values above 2**53 lose precision in float64). NX elements with this id
        count as absent here: see io_bytes().
        """
        if dtype is None:
            if isinstance(default, (int, np.integer)) and not isinstance(default, bool):
                dtype = np.uint64 if default >= 0 else np.int64
            else:
                dtype = np.float64
        out = np.full(len(self), default, dtype=dtype)
        sel = np.flatnonzero((self.io_id == io_id) & (self.io_width != 0))
        if len(sel):
            out[self.io_record[sel]] = self.io_value[sel].astype(dtype, copy=False)
        return out

    def io_present(self, io_id: int) -> np.ndarray:
        """bool per record: IO `io_id` occurs in it (fixed-size or NX)."""
        out = np.zeros(len(self), dtype=bool)
        out[self.io_record[self.io_id == io_id]] = True
        return out

    def io_bytes(self, io_id: int) -> list[bytes | None]:
        """Per record, the bytes of NX element `io_id` (None where absent).

        Fixed-size values come back as their big-endian wire bytes, so an identifier
        such as iButton 78 can be hashed the same way whether it was sent fixed or NX.
        """
        sel = np.flatnonzero(self.io_id == io_id)
        return elements_as_bytes(len(self), self.io_record[sel], self.io_width[sel], self.io_value[sel],
                                 self.io_nx_len[sel], self.nx_data)

    # ------------------------------------------------------------------ rows

    def select(self, rows) -> AvlBatch:
        """A new batch of the chosen rows (bool mask or integer indices, in that order).

        Frame-level columns and `errors` are carried over unchanged; `frame_index` still
        names the input frame of each row; `nx_data` is shared.
        """
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise ValueError(f"mask of shape {rows.shape} for {len(self)} records")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        n = len(self)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} records")
        rows = np.where(rows < 0, rows + n, rows)
        b = object.__new__(AvlBatch)
        for name, _ in _REC_COLUMNS:
            setattr(b, name, getattr(self, name)[rows])
        starts = self.io_offsets[rows]
        counts = self.io_offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # element indices: for each chosen row, starts[r] .. starts[r] + counts[r]
        idx = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1], dtype=np.int64)
        b.io_offsets = offsets
        for name, _ in _IO_COLUMNS:
            setattr(b, name, getattr(self, name)[idx])
        b.nx_data = self.nx_data
        b.frame_ok = self.frame_ok
        b.frame_codec = self.frame_codec
        b.frame_records = self.frame_records
        b.errors = self.errors
        b._io_record = None
        return b

    # ------------------------------------------------------------------ objects

    def record(self, i: int) -> AvlRecord:
        return self.records(slice(i, i + 1) if i != -1 else slice(-1, None))[0]

    def records(self, rows: slice | None = None) -> list[AvlRecord]:
        """AvlRecord objects equal to what decode(frame).records holds (io in wire order,
        io_width for the fixed-size values). For output and tests, not the hot path."""
        rows = slice(None) if rows is None else rows
        r0, r1, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("records(): contiguous slices only; use select() first")
        if r1 <= r0:
            return []
        cols = [getattr(self, n)[r0:r1].tolist() for n in
                ("timestamp_ms", "priority", "lon", "lat", "altitude", "angle", "satellites",
                 "speed", "event_io_id", "generation_type")]
        e0, e1 = int(self.io_offsets[r0]), int(self.io_offsets[r1])
        offs = (self.io_offsets[r0:r1 + 1] - e0).tolist()
        ids = self.io_id[e0:e1].tolist()
        widths = self.io_width[e0:e1].tolist()
        values = self.io_value[e0:e1].tolist()
        nxlen = self.io_nx_len[e0:e1].tolist()
        nx = self.nx_data
        out = []
        for k, (ts, pr, lon, lat, alt, ang, sat, spd, ev, gen) in enumerate(zip(*cols)):
            io: dict = {}
            iow: dict = {}
            for j in range(offs[k], offs[k + 1]):
                w = widths[j]
                if w:
                    io[ids[j]] = values[j]
                    iow[ids[j]] = w
                else:
                    io[ids[j]] = nx[values[j]:values[j] + nxlen[j]]
            out.append(AvlRecord(ts, pr, lon, lat, alt, ang, sat, spd, ev, io, iow,
                                 None if gen < 0 else gen))
        return out

    def packets(self) -> list[AvlPacket | None]:
        """Per input frame, the AvlPacket decode() would return (None for a failed frame).
        Only meaningful on a batch straight from decode_batch (not after select())."""
        recs = self.records()
        offs = self.frame_offsets.tolist()
        return [AvlPacket(int(c), tuple(recs[offs[k]:offs[k + 1]])) if ok else None
                for k, (ok, c) in enumerate(zip(self.frame_ok.tolist(), self.frame_codec.tolist()))]


def decode_batch(frames: Sequence[bytes], *, check_crc: bool = True,
                 cap: int = DEFAULT_CAP, udp: Sequence[bool] | None = None) -> AvlBatch:
    """Decode whole TCP AVL frames into columns. Never raises for bad frame bytes.

    `cap`: frames whose declared size (data length + 12) is above it fail with
    "too_large". `check_crc=False` skips only the CRC comparison.

    `udp`: per frame, True for a UDP AVL datagram instead, whose header the caller has
    checked (codecs/udp.py header()): its AVL part, from byte 23, is decoded as
    udp.decode() does (no CRC; offsets the datagram's; "too_large" above `cap` bytes).
    """
    if not isinstance(frames, (list, tuple)):
        frames = list(frames)
    nf = len(frames)
    kinds = None
    if udp is not None:
        kinds = np.ascontiguousarray(udp, dtype=np.bool_).view(np.uint8)
        if kinds.shape != (nf,):
            raise ValueError(f"udp has {kinds.size} entries for {nf} frames")
    # Upper bounds (proof in docs/decode_batch.md): a record is written only once its
    # shape check passed, so it spans >= 30 of its frame's bytes (the smallest record,
    # Codec 8 without IO; 8E 38, 16 32), and records never overlap; an IO element >= 2;
    # NX bytes are copied from the frame. A frame longer than `cap` fails before anything
    # is written, so no frame contributes more than `cap` bytes. The C code checks every
    # write against these lengths all the same.
    total = min(sum(map(len, frames)), nf * max(cap, 0))
    rec_cap = total // 30 + 1
    io_cap = total // 2 + 1
    # One allocation carved into the columns: when a batch is dropped the whole block
    # goes back to malloc at once and the next call of a similar size reuses it instead
    # of faulting in fresh pages (measured: ~1.6x on 1,000-frame calls).
    shapes = ([(rec_cap, t) for _, t in _REC_COLUMNS] + [(rec_cap + 1, np.int64)]
              + [(io_cap, t) for _, t in _IO_COLUMNS] + [(total + 1, np.uint8)]
              + [(nf, np.bool_), (nf, np.uint8), (nf, np.int32)])
    offsets, size = [], 0
    for n, t in shapes:
        offsets.append(size)
        size += (n * np.dtype(t).itemsize + 63) & ~63          # 64-byte aligned columns
    block = np.empty(size, dtype=np.uint8)
    cols = [block[o:o + n * np.dtype(t).itemsize].view(t) for o, (n, t) in zip(offsets, shapes)]
    nrc = len(_REC_COLUMNS)
    rec, io_offsets = cols[:nrc], cols[nrc]
    io, nx = cols[nrc + 1:nrc + 5], cols[nrc + 5]
    frame_ok, frame_codec, frame_records = cols[nrc + 6:]
    n_rec, n_io, n_nx, errs = _avlbatch.decode_into(
        frames, cap, check_crc, (*rec, io_offsets), tuple(io), nx,
        (frame_ok, frame_codec, frame_records), kinds)
    b = object.__new__(AvlBatch)
    for (name, _), arr in zip(_REC_COLUMNS, rec):
        setattr(b, name, arr[:n_rec])
    b.io_offsets = io_offsets[:n_rec + 1]
    for (name, _), arr in zip(_IO_COLUMNS, io):
        setattr(b, name, arr[:n_io])
    b.nx_data = nx[:n_nx].tobytes()
    b.frame_ok = frame_ok
    b.frame_codec = frame_codec
    b.frame_records = frame_records
    b.errors = [(k, DecodeError(reason, offset, detail)) for k, reason, offset, detail in errs]
    b._io_record = None
    return b


def decode_avl_frame(frame: bytes, *, check_crc: bool = True, cap: int | None = None) -> AvlPacket:
    """One TCP AVL frame -> AvlPacket via the C parser, raising DecodeError like decode().

    For the per-frame decoder's fast path: same checks, same reasons and offsets. With
    cap=None no size cap is applied (decode() has none; the framer caps).
    """
    codec, records = _avlbatch.parse_frame(frame, AvlRecord, _NO_CAP if cap is None else cap,
                                           check_crc)
    return AvlPacket(codec, records)

"""Deterministic, keyed record ids.

    record_id = base32(BLAKE2b-128(key = K[scope, route, "record_id", epoch],
                                   tenant NUL IMEI NUL record content))

- deterministic: the same raw record gives the same id on every re-processing (the
  epoch comes from the record's timestamp, like the pseudonyms);
- a device's retransmission of a record (same bytes) gets the same id, so consumers
  of an at-least-once stream drop the duplicate;
- keyed: the id reveals nothing about the IMEI or the content, and ids of the
  processor route (tenant's key) and of the controller route (service key) cannot be
  matched with each other;
- the content is the record's raw AVL bytes when the caller has them (`content`),
  otherwise a fixed packing of the decoded columns (timestamp, priority, lat/lon in
  1e-7 degrees, altitude, angle, satellites, speed, event IO id) plus the IO values
  the caller passed.

The hashing runs in C (`_recordid.c`: BLAKE2b after RFC 7693, base32, and the packing
of a decoded batch's contents), on `RecordContents`: every record's content in one
buffer with offsets, which a list of bytes is turned into first. The ids are the ones
hashlib.blake2b gives (tested): ids are a stable contract.
"""
from __future__ import annotations

import operator
import struct
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from . import _recordid
from .canonical import canonical_imei
from .epochs import epoch_ids
from .keys import SERVICE, Keyring

_ROW = np.dtype([("ts", "<i8"), ("pri", "<i2"), ("lat", "<i4"), ("lon", "<i4"), ("alt", "<i4"),
                 ("ang", "<i4"), ("sat", "<i2"), ("spd", "<i4"), ("evt", "<i4")])


def pack_columns(
    timestamp_ms: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    priority=None, altitude=None, angle=None, satellites=None, speed=None, event_io_id=None,
    io: Mapping[int, np.ndarray] | None = None,
) -> list[bytes]:
    """One byte string per record from decoded columns (when raw bytes are not at hand)."""
    n = len(timestamp_ms)
    rows = np.zeros(n, dtype=_ROW)
    rows["ts"] = timestamp_ms
    rows["lat"] = np.round(np.nan_to_num(np.asarray(lat, dtype=np.float64)) * 1e7)
    rows["lon"] = np.round(np.nan_to_num(np.asarray(lon, dtype=np.float64)) * 1e7)
    for name, col in (("pri", priority), ("alt", altitude), ("ang", angle), ("sat", satellites), ("spd", speed), ("evt", event_io_id)):
        if col is not None:
            rows[name] = np.nan_to_num(np.asarray(col, dtype=np.float64))
    raw = rows.view(f"S{_ROW.itemsize}") if n else np.zeros(0, dtype="S1")
    out = [bytes(r).ljust(_ROW.itemsize, b"\0") for r in raw.tolist()] if n else []
    if io:
        for io_id in sorted(io):
            col = io[io_id]
            tag = struct.pack("<H", io_id & 0xFFFF)
            vals = col.tolist() if hasattr(col, "tolist") else list(col)
            out = [o + tag + _value_bytes(v) for o, v in zip(out, vals)]
    return out


def _value_bytes(v) -> bytes:
    if v is None:
        return b"\xff"
    if isinstance(v, int):
        return b"\x01" + v.to_bytes(16, "big", signed=v < 0)
    if isinstance(v, str):
        return b"\x02" + v.encode() + b"\0"
    return b"\x03" + len(v).to_bytes(4, "big") + bytes(v)


class RecordContents(Sequence):
    """Records' contents in one buffer: record r is `buffer[offsets[r]:offsets[r + 1]]`.

    A sequence of bytes (indexing gives the record's bytes), of `rows` when set: `take`
    picks and orders records by keeping row numbers, without copying any bytes. This is
    what `_recordid.ids` hashes; `record_contents(batch)` builds it in one C call."""

    __slots__ = ("buffer", "offsets", "rows")

    def __init__(self, buffer: bytes, offsets: np.ndarray, rows: np.ndarray | None = None):
        self.buffer = buffer
        self.offsets = np.asarray(offsets, dtype=np.int64)       # n + 1, into buffer
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    @classmethod
    def pack(cls, contents: Sequence[bytes]) -> RecordContents:
        """From one bytes-like object per record."""
        offsets = np.zeros(len(contents) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, contents), dtype=np.int64, count=len(contents)), out=offsets[1:])
        return cls(b"".join(contents), offsets)

    def __repr__(self) -> str:
        return f"<RecordContents {len(self)} records, {len(self.buffer)} bytes>"

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n, i = len(self), operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"record {i} of {n}")
        r = i % n if self.rows is None else int(self.rows[i])
        return self.buffer[int(self.offsets[r]):int(self.offsets[r + 1])]

    def __iter__(self) -> Iterator[bytes]:
        off = self.offsets.tolist()
        rows = range(len(off) - 1) if self.rows is None else self.rows.tolist()
        buf = self.buffer
        return (buf[off[r]:off[r + 1]] for r in rows)

    def take(self, idx) -> RecordContents:
        """The records `idx` (integer indices in any order, or a bool mask), sharing the buffer."""
        idx = np.asarray(idx)
        rows = np.arange(len(self.offsets) - 1, dtype=np.int64) if self.rows is None else self.rows
        return RecordContents(self.buffer, self.offsets, rows[idx if idx.dtype == bool else idx.astype(np.intp, copy=False)])


class RecordIds:
    """record_id for one (tenant, route). The `tenant NUL IMEI NUL` prefixes are cached
    per IMEI; the keys come from the keyring per batch (it caches them), so a destroyed
    epoch raises EpochDestroyed as soon as it is gone."""

    def __repr__(self) -> str:
        return f"RecordIds(tenant={self.tenant!r}, route={self.route!r})"

    def __init__(self, keyring: Keyring, *, tenant: str, route: str = "processor", rotation: str = "monthly"):
        self.keyring = keyring
        self.tenant = tenant
        self.route = route
        self.scope = tenant if route == "processor" else SERVICE
        self.rotation = rotation
        self._tenant = tenant.encode() + b"\0"
        self._prefixes: dict = {}  # IMEI (str or int) -> tenant NUL canonical IMEI NUL

    def compute(self, imeis: Sequence | np.ndarray, timestamps_ms: np.ndarray,
                content: Sequence[bytes] | RecordContents, *,
                distinct: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The ids (object array of str) of records given by IMEI, timestamp and content
        (a RecordContents, or one bytes object per record). distinct: (distinct IMEIs,
        index into them per record) when the caller has them."""
        ts = np.asarray(timestamps_ms, dtype=np.int64)
        n = ts.shape[0]
        out = np.empty(n, dtype=object)
        if n == 0:
            return out
        if not isinstance(content, RecordContents):
            content = RecordContents.pack(content)
        if len(content) != n:
            raise ValueError(f"{len(content)} record contents for {n} timestamps")
        labels, inv = epoch_ids(ts, self.rotation)
        keys = [self.keyring.derive(self.scope, self.route, "record_id", lab).reveal() for lab in labels]
        prefixes, pidx = self._prefix_index(imeis, n) if distinct is None else self._prefixes_of(*distinct, n)
        out[:] = _recordid.ids(keys, inv.astype(np.int64, copy=False), prefixes, pidx,
                               content.buffer, content.offsets, content.rows)
        return out

    def _prefixes_of(self, uniq, inv, n: int) -> tuple[list[bytes], np.ndarray]:
        inv = np.asarray(inv, dtype=np.int64)
        if inv.shape[0] != n:
            raise ValueError(f"{inv.shape[0]} IMEIs for {n} timestamps")
        known = self._prefixes
        if len(known) > 1_000_000:
            known.clear()
        prefixes = []
        for v in np.asarray(uniq).tolist():
            p = known.get(v)
            if p is None:
                p = known[v] = self._tenant + canonical_imei(v) + b"\0"
            prefixes.append(p)
        return prefixes, inv

    def _prefix_index(self, imeis, n: int) -> tuple[list[bytes], np.ndarray]:
        """(distinct prefixes, index into them per record), by a dict pass (no sorting)."""
        vals = imeis.tolist() if isinstance(imeis, np.ndarray) else list(imeis)
        if len(vals) != n:
            raise ValueError(f"{len(vals)} IMEIs for {n} timestamps")
        index = {v: i for i, v in enumerate(dict.fromkeys(vals))}
        known = self._prefixes
        if len(known) > 1_000_000:
            known.clear()
        prefixes = []
        for v in index:
            p = known.get(v)
            if p is None:
                p = known[v] = self._tenant + canonical_imei(v) + b"\0"
            prefixes.append(p)
        return prefixes, np.fromiter(map(index.__getitem__, vals), dtype=np.int64, count=n)

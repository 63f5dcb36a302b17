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
"""
from __future__ import annotations

import hashlib
import struct
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from .canonical import canonical_imei
from .epochs import epoch_ids
from .keys import SERVICE, Keyring, b32_many

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


_B2 = type(hashlib.blake2b())
_COPY, _UPDATE, _DIGEST = _B2.copy, _B2.update, _B2.digest


class RecordIds:
    """record_id for one (tenant, route). Hash states are cached per (epoch, IMEI)
    (keyed state objects; never logged or pickled)."""

    def __repr__(self) -> str:
        return f"RecordIds(tenant={self.tenant!r}, route={self.route!r})"

    def __init__(self, keyring: Keyring, *, tenant: str, route: str = "processor", rotation: str = "monthly"):
        self.keyring = keyring
        self.tenant = tenant
        self.route = route
        self.scope = tenant if route == "processor" else SERVICE
        self.rotation = rotation
        self._tenant = tenant.encode() + b"\0"
        self._bases: dict = {}   # epoch -> keyed BLAKE2b state
        self._states: dict = {}  # (epoch, IMEI) -> keyed state with the prefix absorbed
        self._gen = keyring.generation

    def compute(self, imeis: Sequence | np.ndarray, timestamps_ms: np.ndarray, content: Sequence[bytes]) -> np.ndarray:
        ts = np.asarray(timestamps_ms, dtype=np.int64)
        n = ts.shape[0]
        out = np.empty(n, dtype=object)
        if n == 0:
            return out
        labels, inv = epoch_ids(ts, self.rotation)
        # keyed BLAKE2b states per epoch, and per (epoch, device) with the prefix already
        # absorbed: a record costs one state copy, one update, one digest
        bases = [self._base(lab) for lab in labels]
        states = self._states
        if len(states) > 1_000_000:
            states.clear()
        imei_l = np.asarray(imeis).tolist()
        keys = [(labels[0], i) for i in imei_l] if len(labels) == 1 else list(zip(map(labels.__getitem__, inv.tolist()), imei_l))
        for key in dict.fromkeys(keys):  # each (epoch, device) of the batch once
            if key not in states:
                st = bases[labels.index(key[0])].copy()
                st.update(self._tenant + canonical_imei(key[1]) + b"\0")
                states[key] = st
        # copy, update, digest as three C-level passes (no Python frame per record)
        hashes = list(map(_COPY, map(states.__getitem__, keys)))
        deque(map(_UPDATE, hashes, content), maxlen=0)
        out[:] = b32_many(list(map(_DIGEST, hashes)))
        return out

    def _base(self, epoch: str):
        if self._gen != self.keyring.generation:  # a destroy: drop every derived state
            self._bases.clear()
            self._states.clear()
            self._gen = self.keyring.generation
        b = self._bases.get(epoch)
        if b is None:
            key = self.keyring.derive(self.scope, self.route, "record_id", epoch).reveal()
            b = self._bases[epoch] = hashlib.blake2b(key=key, digest_size=16)
        return b

"""Private mode: which records are private, vectorised.

A record is private when the device says so (IO 391 "Private Mode" != 0, if the policy
honours it) or when its timestamp falls in one of the policy's private hours, read in
the tenant's time zone (zoneinfo; DST handled). The processor route strips what the
policy says from private records; the controller route drops them.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np

PRIVATE_MODE_IO = 391
DAY_MS = 86_400_000
_SLOT_MS = 900_000  # UTC offsets are looked up per 15-minute slot
_DAY_INDEX = {d: i for i, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))}


def _offset_ms(tz: ZoneInfo, t_ms: int) -> int:
    off = datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc).astimezone(tz).utcoffset()
    return int(off.total_seconds() * 1000) if off is not None else 0


def utc_offsets_ms(timestamps_ms: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """The zone's UTC offset (ms) at each timestamp: one zoneinfo lookup per distinct
    15-minute slot, exact per record in a slot that contains a transition."""
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if ts.size == 0:
        return np.zeros(0, dtype=np.int64)
    slots, inv = np.unique(ts // _SLOT_MS, return_inverse=True)
    offs = np.empty(slots.shape[0], dtype=np.int64)
    for i, s in enumerate(slots.tolist()):
        a = _offset_ms(tz, s * _SLOT_MS)
        b = _offset_ms(tz, s * _SLOT_MS + _SLOT_MS - 1)
        offs[i] = a if a == b else np.iinfo(np.int64).min  # transition inside: per record
    out = offs[inv]
    odd = np.flatnonzero(out == np.iinfo(np.int64).min)
    for j in odd.tolist():
        out[j] = _offset_ms(tz, int(ts[j]))
    return out


def private_hours_mask(timestamps_ms: np.ndarray, hours: Sequence, tz: ZoneInfo | str) -> np.ndarray:
    """True where a timestamp falls in any of the PrivateHours windows (local time)."""
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    mask = np.zeros(ts.shape[0], dtype=bool)
    if not hours or ts.size == 0:
        return mask
    tz = ZoneInfo(tz) if isinstance(tz, str) else tz
    local = ts + utc_offsets_ms(ts, tz)
    day = np.floor_divide(local, DAY_MS)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    sod = (local - day * DAY_MS) // 1000  # second of the local day
    for h in hours:
        days = np.zeros(7, dtype=bool)
        days[[_DAY_INDEX[d] for d in h.days]] = True
        s = h.start.hour * 3600 + h.start.minute * 60 + h.start.second
        e = h.end.hour * 3600 + h.end.minute * 60 + h.end.second
        if s < e:
            mask |= days[weekday] & (sod >= s) & (sod < e)
        else:  # past midnight (or 24 h when s == e): the tail belongs to the previous day
            mask |= (days[weekday] & (sod >= s)) | (days[(weekday - 1) % 7] & (sod < e))
    return mask


def device_private_mask(io391: np.ndarray | None, n: int) -> np.ndarray:
    """True where IO 391 (Private Mode) is present and non-zero."""
    if io391 is None:
        return np.zeros(n, dtype=bool)
    v = np.asarray(io391)
    if v.dtype == object:
        return np.fromiter((bool(x) for x in v.tolist()), dtype=bool, count=v.shape[0])
    return v != 0


def private_mask(timestamps_ms: np.ndarray, io391: np.ndarray | None, private_mode, tz: ZoneInfo | str) -> np.ndarray:
    """Combined: the device flag (when honoured) or the private hours."""
    ts = np.asarray(timestamps_ms)
    m = private_hours_mask(ts, private_mode.hours, tz)
    if private_mode.honour_device_flag:
        m |= device_private_mask(io391, ts.shape[0])
    return m

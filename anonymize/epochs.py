"""Key epochs: which period's key a record's pseudonyms use.

The epoch of a record is taken from the record's own timestamp (UTC), not from the time
it is processed: re-processing the same raw data gives the same pseudonyms and
record_ids, and a device's backlog lands in the epoch it was recorded in (so destroying
an old epoch also unlinks a late-delivered backlog of that period).

Epoch ids are short, lowercase, underscore-free (they sit inside a pseudonym between
underscores) and unambiguous across schedules:

  daily    2026m11d22      monthly  2026m11       never  static
  weekly   2026w47 (ISO)   yearly   y2026
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import numpy as np

ROTATIONS = ("daily", "weekly", "monthly", "yearly", "never")
DAY_MS = 86_400_000
STATIC = "static"
_EPOCH_1970 = date(1970, 1, 1)

_PATTERNS = (
    ("daily", re.compile(r"^(\d{4})m(\d{2})d(\d{2})$")),
    ("weekly", re.compile(r"^(\d{4})w(\d{2})$")),
    ("monthly", re.compile(r"^(\d{4})m(\d{2})$")),
    ("yearly", re.compile(r"^y(\d{4})$")),
)


def _day(days_since_1970: int) -> date:
    try:
        return _EPOCH_1970 + timedelta(days=days_since_1970)
    except OverflowError:
        raise ValueError(
            f"timestamp out of range ({days_since_1970} days from 1970): no key epoch; "
            "the retention gate drops such records before anonymisation"
        ) from None


def _label_for_day(day: date, rotation: str) -> str:
    if rotation == "monthly":
        return f"{day.year:04d}m{day.month:02d}"
    if rotation == "daily":
        return f"{day.year:04d}m{day.month:02d}d{day.day:02d}"
    if rotation == "weekly":
        y, w, _ = day.isocalendar()
        return f"{y:04d}w{w:02d}"
    if rotation == "yearly":
        return f"y{day.year:04d}"
    if rotation == "never":
        return STATIC
    raise ValueError(f"unknown rotation {rotation!r}; one of {', '.join(ROTATIONS)}")


def epoch_id(timestamp_ms: int, rotation: str = "monthly") -> str:
    """The epoch id of one UTC timestamp (milliseconds)."""
    return _label_for_day(_day(int(timestamp_ms) // DAY_MS), rotation)


def epoch_of_datetime(when: datetime, rotation: str = "monthly") -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return epoch_id(int(when.timestamp() * 1000), rotation)


def epoch_ids(timestamps_ms: np.ndarray, rotation: str = "monthly") -> tuple[list[str], np.ndarray]:
    """Vectorised: (distinct epoch ids, index into them for every timestamp).

    Only distinct days are turned into labels, so a batch costs one np.unique.
    """
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if ts.size == 0:
        return [], np.zeros(0, dtype=np.intp)
    days = ts // DAY_MS
    lo, hi = days.min(), days.max()
    if lo == hi:  # the usual batch: one day
        return [_label_for_day(_day(int(lo)), rotation)], np.zeros(ts.size, np.intp)
    if hi - lo <= 4096:  # days of a batch span little: index them by offset, no sort
        offset = days - lo
        present = np.zeros(int(hi - lo) + 1, dtype=bool)
        present[offset] = True
        udays = lo + np.flatnonzero(present)
        inv = (np.cumsum(present) - 1)[offset]
    else:
        udays, inv = np.unique(days, return_inverse=True)
    labels = [_label_for_day(_day(int(d)), rotation) for d in udays]
    ulabels, linv = np.unique(np.array(labels, dtype=object), return_inverse=True)
    return list(ulabels), linv[inv]


def parse_epoch(label: str) -> tuple[str, int, int | None]:
    """(rotation, start_ms, end_ms exclusive) of an epoch id; end is None for `static`."""
    if label == STATIC:
        return "never", 0, None
    for rotation, pat in _PATTERNS:
        m = pat.match(label)
        if not m:
            continue
        g = [int(x) for x in m.groups()]
        if rotation == "daily":
            start = date(g[0], g[1], g[2])
            end = start + timedelta(days=1)
        elif rotation == "weekly":
            start = date.fromisocalendar(g[0], g[1], 1)
            end = start + timedelta(days=7)
        elif rotation == "monthly":
            start = date(g[0], g[1], 1)
            end = date(g[0] + (g[1] == 12), g[1] % 12 + 1, 1)
        else:
            start, end = date(g[0], 1, 1), date(g[0] + 1, 1, 1)
        to_ms = lambda d: (d - _EPOCH_1970).days * DAY_MS  # noqa: E731
        return rotation, to_ms(start), to_ms(end)
    raise ValueError(f"{label!r} is not an epoch id")


def is_epoch_id(label: str) -> bool:
    try:
        parse_epoch(label)
    except ValueError:
        return False
    return True


def epoch_expired(label: str, now_ms: int, retention_days: int) -> bool:
    """True when every record of the epoch is older than the retention window.

    An epoch is expired once its *end* is more than `retention_days` before now: until
    then some of its records are still held and must stay linkable for the tenant.
    """
    _, _, end = parse_epoch(label)
    return end is not None and end <= now_ms - retention_days * DAY_MS

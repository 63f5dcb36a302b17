"""Fault injection: what networks and devices do to telemetry, each fault at its own rate.

Rates are probabilities per send (record-level faults) or per packet (packet-level
faults); a packet gets at most one fault. `--faults R` spreads a total rate R over the
mix in DEFAULT_MIX.

record-level (decided per send, before packetisation; the records are extra copies of
the send's records with shifted timestamps, so the model's own records are untouched):
  backlog      1-30 records from the device's memory, timestamped 400-900 days before
               the simulated start (an RTC or buffer problem): fate too_old.
  future       1-5 records with a clock in the future, at least 366 days after the
               simulated end: fate future.
  Both land in the same packets as the send's normal records (packets mix fates).

packet-level:
  crc          transit corruption. TCP: one bit flipped in the data field, so the CRC
               fails; UDP (no CRC): Number of Data 2 altered, so the count check fails.
  truncation   the frame cut short inside its records (a dropped connection); the
               header up to Number of Data 1 survives.
  garbage      random bytes added to the frame. TCP: 2-33 bytes in front, the first one
               never 00 or FF, so it cannot start a data frame or a keep-alive (on a
               TCP stream, junk AFTER a frame would be a separate, later problem and
               the frame itself would arrive intact); UDP: 1-32 bytes after it.
               For these three the corrupt copy (fate corrupt) is followed, after the
               device's response timeout (20-60 s), by the clean resend it triggers.
  duplicate    the packet arrives twice, the copy 20-60 s later (a lost ACK):
               the copy's records are fate duplicate.
  out_of_order the packet arrives after the device's next packet.
  unknown_imei the same packet is also sent by a device no tenant owns (an IMEI from
               Fleet.unknown_imeis): fate unknown_device.
Every corrupt copy fails fleetcloak.codecs.decode; the tests check it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


RECORD_FAULTS = ("backlog", "future")
PACKET_FAULTS = ("crc", "truncation", "garbage", "duplicate", "out_of_order", "unknown_imei")
FAULTS = RECORD_FAULTS + PACKET_FAULTS
CORRUPTING = ("crc", "truncation", "garbage")

DEFAULT_MIX = {
    "crc": 0.18, "truncation": 0.08, "garbage": 0.08, "duplicate": 0.20,
    "out_of_order": 0.14, "backlog": 0.12, "future": 0.06, "unknown_imei": 0.14,
}
DAY_MS = 86_400_000


@dataclass(frozen=True)
class FaultRates:
    rates: tuple[tuple[str, float], ...] = ()

    @classmethod
    def build(cls, total: float = 0.0, overrides: dict[str, float] | None = None) -> "FaultRates":
        if not 0.0 <= total <= 1.0:
            raise ValueError("--faults takes a total rate between 0 and 1")
        r = {k: total * w for k, w in DEFAULT_MIX.items()}
        for k, v in (overrides or {}).items():
            if k not in FAULTS:
                raise ValueError(f"unknown fault {k!r}; known: {', '.join(FAULTS)}")
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"fault rate {k}={v} is not between 0 and 1")
            r[k] = v
        if sum(r[k] for k in PACKET_FAULTS) > 1.0 or sum(r[k] for k in RECORD_FAULTS) > 1.0:
            raise ValueError("fault rates add up to more than 1")
        return cls(tuple((k, r[k]) for k in FAULTS))

    def get(self, name: str) -> float:
        return dict(self.rates).get(name, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.rates}

    def pick(self, u: float, kinds: tuple[str, ...]) -> str | None:
        """The fault a uniform draw `u` selects among `kinds`, or None."""
        for k, upper in self._cumulative[kinds]:
            if u < upper:
                return k
        return None

    def top(self, kinds: tuple[str, ...]) -> float:
        """The summed rate of `kinds`: pick() is None for any draw at or above it."""
        c = self._cumulative[kinds]
        return c[-1][1] if c else 0.0

    @cached_property
    def _cumulative(self) -> dict[tuple[str, ...], list[tuple[str, float]]]:
        d = dict(self.rates)
        out = {}
        for kinds in (RECORD_FAULTS, PACKET_FAULTS):
            acc, c = 0.0, []
            for k in kinds:
                if d.get(k, 0.0) > 0:
                    acc += d[k]
                    c.append((k, acc))
            out[kinds] = c
        return out


def backlog_rows(rng: np.random.Generator, rows: list[tuple], span_ms: int) -> tuple[list[tuple], list[int]]:
    """Old records (>= 400 days before the start) to put in front of a send: copies of
    the send's rows (timestamp first) with shifted timestamps, and the index in `rows`
    each copy came from (its layout is that row's)."""
    k = int(rng.integers(1, 31))
    src = [i % len(rows) for i in range(k)]
    base = span_ms + int(rng.integers(400, 901)) * DAY_MS + int(rng.integers(0, 86_400)) * 1000
    # Oldest first, 10 s apart, all at least `base` before the send's first record.
    t0 = rows[0][0] - base - k * 10_000
    return [(t0 + i * 10_000,) + rows[j][1:] for i, j in enumerate(src)], src


def future_rows(rng: np.random.Generator, rows: list[tuple], span_ms: int) -> tuple[list[tuple], list[int]]:
    """Records whose clock runs >= 366 days past the simulated end (copies of the send's
    last rows), and the index in `rows` each came from."""
    k = min(len(rows), int(rng.integers(1, 6)))
    delta = span_ms + int(rng.integers(366, 731)) * DAY_MS + int(rng.integers(0, 86_400)) * 1000
    src = list(range(len(rows) - k, len(rows)))
    return [(rows[j][0] + delta,) + rows[j][1:] for j in src], src


def corrupt(rng: np.random.Generator, kind: str, frame: bytes, transport: str) -> bytes:
    """A copy of `frame` that fleetcloak.codecs.decode rejects (see the module notes)."""
    n = len(frame)
    if kind == "crc":
        b = bytearray(frame)
        if transport == "tcp":
            length = int.from_bytes(frame[4:8], "big")
            pos = 8 + int(rng.integers(0, length))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            b[-1] = (b[-1] + int(rng.integers(1, 255))) & 0xFF
        return bytes(b)
    if kind == "truncation":
        # Cut inside the records: the header (and Number of Data 1) survives, so a
        # dead-letter consumer can still tell how many records were lost.
        head = 10 if transport == "tcp" else 25
        return frame[:int(rng.integers(head, n))]
    if kind == "garbage":
        junk = rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
        if transport == "tcp":
            return bytes([int(rng.integers(1, 255))]) + junk + frame
        return frame + junk
    raise ValueError(kind)


def resend_delay_ms(rng: np.random.Generator) -> int:
    """A device's response timeout before it resends an unacknowledged packet."""
    return int(rng.integers(20_000, 60_001))

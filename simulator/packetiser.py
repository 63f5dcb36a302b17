"""Records -> packets the way a tracker sends them, and packets -> wire bytes.

A device buffers its records and, every `send_period_s` (on its own clock phase), sends
what it holds if that is at least `min_records` records, or if the ignition is off
(parked devices send each record: Teltonika's "min saved records" is 1 on stop). A send
is split into as many packets as the byte limit needs (1280 bytes per frame, 512 for the FMB640; protocol notes 7). Sizes are
computed from the layout (a record's size depends only on the codec and which IO widths
it carries), and the encoder has the last word: a chunk that encodes too large is split.

Bytes always come from fleetcloak.codecs: a day's records are encoded at once by
avl.encode_columns (telemetry.encode_days) and a packet is a slice of those bytes framed
by teltonika.frame_records; packets with record faults (rows with new timestamps) go
through encode_rows (the records as plain int tuples). The simulator never writes its
own encoder. An `Emission` is one message as it reaches the raw topic (or the gateway).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..codecs.avl import record_from_row
from ..codecs.packets import CODEC_8, CODEC_8E, AvlPacket
from ..codecs.teltonika import encode_rows, frame_records
from .fleet import Vehicle

# Record bytes before the IO pairs, and bytes per IO pair beyond its value (id width).
_RECORD_BASE = {CODEC_8: 24 + 1 + 1 + 4, CODEC_8E: 24 + 2 + 2 + 5 * 2, 0x10: 24 + 2 + 1 + 1 + 4}
_ID_W = {CODEC_8: 1, CODEC_8E: 2, 0x10: 2}
TCP_OVERHEAD = 8 + 1 + 1 + 1 + 4          # preamble+length, codec, N1, N2, CRC
UDP_OVERHEAD = 2 + 2 + 1 + 1 + 2 + 15 + 1 + 1 + 1


@dataclass(slots=True)
class Emission:
    """One message for the sink: the bytes a device (or the network) delivered.

    `fates` maps fate -> number of records, as the truth counts them when this copy is
    delivered as planned (truth.py defines the fates). `fault` is the fault label, kept
    for the truth and the summary only: sinks never write it into the stream. `packet`
    (the records the frame was encoded from) is kept only when the Simulation was made
    with keep_packets=True (tests); the CLI drops it to keep a day in memory cheaply.
    """

    received_at: int                  # ms since the epoch
    order: tuple                      # deterministic tie-break for equal received_at
    imei: str
    transport: str
    frame: bytes
    packet: AvlPacket | None          # the packet the frame was encoded from (clean)
    fates: dict[str, int]
    fault: str | None = None
    copy: str = "original"            # original | corrupt | resend | duplicate | phantom
    device: int = -1                  # vehicle index (-1 for unknown devices)
    n_records: int = 0
    avl_packet_id: int | None = None  # UDP: what the ACK must echo


@dataclass
class DeviceLink:
    """Per-device sending state that lasts across days (UDP packet ids)."""

    packet_id: int = 0
    avl_packet_id: int = 0
    seq: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def next_udp_ids(self) -> tuple[int, int]:
        self.packet_id = (self.packet_id + 1) & 0xFFFF
        self.avl_packet_id = (self.avl_packet_id + 1) & 0xFF
        return self.packet_id, self.avl_packet_id


def record_layout_size(codec: int, io_width: dict[int, int]) -> int:
    """Encoded size of a record whose IO elements have these fixed widths."""
    return _RECORD_BASE[codec] + sum(_ID_W[codec] + w for w in io_width.values())


def send_groups(veh: Vehicle, ms, ign) -> list[tuple[int, int, int]]:
    """Group a device-day's records (timestamps `ms`, ignition `ign`: lists or numpy
    arrays) by the send tick that carries them: [(send time s, first, end)], index
    ranges into the day.

    The day's last buffer is sent at its tick (devices do not carry it over midnight).
    """
    n = len(ms)
    if not n:
        return []
    t = np.asarray(ms, dtype=np.int64) // 1000
    p = veh.send_period_s
    tick = np.ceil((t - veh.phase_s) / p).astype(np.int64) * p + veh.phase_s
    cuts = np.flatnonzero(np.diff(tick)) + 1
    before = cuts - 1
    out: list[tuple[int, int, int]] = []
    start, need = 0, veh.min_records
    # A tick at each cut a: the records [start, a) are buffered; send if enough or parked.
    for a, ta, on in zip(cuts.tolist(), tick[before].tolist(), np.asarray(ign)[before].tolist()):
        if a - start >= need or not on:
            out.append((ta, start, a))
            start = a
    out.append((int(tick[-1]), start, n))
    return out


def chunk(veh: Vehicle, has_card: list[bool], size_plain: int, size_card: int,
          max_record: int = 0) -> list[tuple[int, int]]:
    """Split a send's records into packets within the byte limit (and <= 255 records):
    [(first, end)] index ranges. A record's size is its layout's (plain or with the
    tachograph card halves).

    `max_record`, the device's largest record layout, lets the common case (everything
    fits even at the largest size) skip the per-record sizes.
    """
    n = len(has_card)
    limit = veh.max_packet - (UDP_OVERHEAD if veh.transport == "udp" else TCP_OVERHEAD)
    if max_record and n * max_record <= limit and n <= 255:
        return [(0, n)]
    sizes = [size_card if h else size_plain for h in has_card]
    if n <= 255 and sum(sizes) <= limit:
        return [(0, n)]
    out, start, size = [], 0, 0
    for i, s in enumerate(sizes):
        if i > start and (size + s > limit or i - start == 255):
            out.append((start, i))
            start, size = i, 0
        size += s
    if start < n:
        out.append((start, n))
    return out


def encode_checked(veh: Vehicle, link: DeviceLink, rows: list[tuple], lays,
                   imei: str | None = None) -> list[tuple[list, list, int | None, int | None, bytes]]:
    """Encode rows as one packet (fleetcloak.codecs.encode_rows; `lays` one row layout
    for all, or a list, one per row; UDP takes the device's
    next packet ids); if the frame is over the limit after all, split it in two (never
    expected). [(rows, lays, packet_id, avl_packet_id, frame)]."""
    if veh.transport == "udp":
        pid, apid = link.next_udp_ids()
        frame = encode_rows(veh.codec, rows, lays, "udp", imei or veh.imei, pid, apid, 1)
    else:
        pid = apid = None
        frame = encode_rows(veh.codec, rows, lays)
    if len(frame) <= veh.max_packet or len(rows) == 1:
        return [(rows, lays, pid, apid, frame)]
    half = len(rows) // 2
    one = not isinstance(lays, list)
    return (encode_checked(veh, link, rows[:half], lays if one else lays[:half], imei)
            + encode_checked(veh, link, rows[half:], lays if one else lays[half:], imei))


def encode_checked_bytes(veh: Vehicle, link: DeviceLink, records: bytes, first: int, end: int,
                         rows_at, lays) -> list[tuple[slice | list, list, int | None, int | None, bytes]]:
    """encode_checked() for the day's records first..end-1 whose bytes are already encoded
    (a slice of the day's fleetcloak.codecs.avl.encode_columns): the same frame, ids and
    split. The rows are not made: the packet's are given as slice(first, end) (rows_at
    makes them when needed: for the split, never expected)."""
    n = end - first
    if veh.transport == "udp":
        pid, apid = link.next_udp_ids()
        frame = frame_records(veh.codec, n, records, "udp", veh.imei, pid, apid, 1)
    else:
        pid = apid = None
        frame = frame_records(veh.codec, n, records)
    if len(frame) <= veh.max_packet or n == 1:
        return [(slice(first, end), lays, pid, apid, frame)]
    rows = rows_at(first, end)
    half = n // 2
    one = not isinstance(lays, list)
    return (encode_checked(veh, link, rows[:half], lays if one else lays[:half])
            + encode_checked(veh, link, rows[half:], lays if one else lays[half:]))


def make_packet(veh: Vehicle, rows: list[tuple], lays, pid: int | None, apid: int | None,
                imei: str | None = None) -> AvlPacket:
    """The AvlPacket that rows stand for (what encode_checked encoded)."""
    if not isinstance(lays, list):  # one layout for every row
        lays = [lays] * len(rows)
    records = tuple(record_from_row(lay, r) for r, lay in zip(rows, lays))
    if veh.transport == "udp":
        return AvlPacket(veh.codec, records, "udp", imei or veh.imei, pid, apid, 1)
    return AvlPacket(veh.codec, records, "tcp")


def latency_array(rng: np.random.Generator, n: int) -> list[int]:
    """Mobile network + gateway latency: mostly 100-600 ms, a long tail to a few seconds."""
    return (80 + np.minimum(5000.0, rng.lognormal(math.log(250), 0.6, n))).astype(np.int64).tolist()

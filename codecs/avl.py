"""AVL record bodies of Codec 8, 8 Extended and 16: decode and encode.

One record (protocol notes 4-5), big-endian, back to back N times in a packet:

  off  size  field
    0     8  timestamp, ms since the Unix epoch (unsigned)
    8     1  priority 0..3
    9     4  longitude, signed, degrees x 1e7       (longitude BEFORE latitude)
   13     4  latitude,  signed, degrees x 1e7
   17     2  altitude, signed metres
   19     2  angle
   21     1  satellites
   22     2  speed km/h
   24        IO element:
                               Codec 8   Codec 8E   Codec 16
             event IO id         u8        u16        u16
             generation type     -         -          u8 (0..7)
             N total             u8        u16        u8
             N1 count, pairs     u8        u16        u8     pair = id + 1-byte value
             N2 count, pairs     ...                         pair = id + 2-byte value
             N4 count, pairs                                 pair = id + 4-byte value
             N8 count, pairs                                 pair = id + 8-byte value
             NX count            -         u16        -      then id u16, len u16, value
             IO id width         1         2          2
             (N16 count u8 + [id u8, 16 bytes]* after N8: a non-standard Codec 8
              variant some devices send; lenient decode only.)

Speed: the counts of one record (its "shape") are read with four byte peeks, then the
whole fixed part of the record (header and every pair) comes out of one struct.Struct
compiled for that shape and cached per codec, with the counts skipped as pad bytes, so
ids and values are two slices of the flat tuple. Records of one shape and the same ids
share one read-only io_width. Real devices repeat a handful of shapes and IO
configurations, so the caches stay small; they are bounded against hostile input
(shapes per codec, shape size, shared io_width dicts in total).
"""
from __future__ import annotations

import operator
import struct
from itertools import starmap

from .errors import DecodeError, EncodeError
from .errors import check_int as _check
from .iodict import IO_DICTIONARY
from .packets import CODEC_8, CODEC_8E, CODEC_16, AvlRecord

# GPS part, common to every codec (24 bytes).
_GPS_FMT = (
    "Q"  # timestamp_ms
    "B"  # priority
    "i"  # longitude x 1e7
    "i"  # latitude x 1e7
    "h"  # altitude (signed, a vector has 0xFFFC = -4 m)
    "H"  # angle
    "B"  # satellites
    "H"  # speed
)

# Per codec: (head format after the GPS part, IO id format, count format).
#   head = event id [, generation type], N total, N1 count
_HEAD = {
    CODEC_8: ("BBB", "B", "B"),    # event u8, N total u8, N1 u8
    CODEC_8E: ("HHH", "H", "H"),   # event u16, N total u16, N1 u16
    CODEC_16: ("HBBB", "H", "B"),  # event u16, generation u8, N total u8, N1 u8
}
_HEAD_SIZE = {c: 24 + struct.calcsize(">" + h[0]) for c, h in _HEAD.items()}  # 27/30/29
_ID_SIZE = {CODEC_8: 1, CODEC_8E: 2, CODEC_16: 2}
_COUNT_SIZE = {CODEC_8: 1, CODEC_8E: 2, CODEC_16: 1}
# Smallest record (no IO at all): protocol notes 5.1.
MIN_RECORD = {CODEC_8: 30, CODEC_8E: 38, CODEC_16: 32}
_VAL_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}
_WIDTHS = (1, 2, 4, 8)
_NX_HEAD = struct.Struct(">HH")  # NX element: id u16, length u16
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")

# Cache bounds, so hostile input cannot grow memory (worst case a few tens of MB):
_CACHE_MAX = 512         # compiled shapes per codec (real devices use a handful)
_CACHE_MAX_PAIRS = 255   # larger shapes are compiled per use, not kept
_IOW_PER_SHAPE = 256     # shared io_width dicts per shape
_IOW_TOTAL = 16384       # ... and over all shapes, only for shapes of <= 64 elements
_IOW_MAX_N = 64


class IoWidths(dict):
    """A decoded record's `io_width`. Records of one shape with the same ids share one
    (building a dict per record costs ~0.6 us, a sixth of the per-record budget), so it
    is read-only: copy it with dict(...) to change it. Compares equal to a plain dict."""

    __slots__ = ()

    def _read_only(self, *args, **kwargs):
        raise TypeError("a decoded record's io_width is shared and read-only; copy it first")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):  # pickle without going through __setitem__
        return (IoWidths, (dict(self),))


class _Shape:
    """Everything precompiled for one (codec, N1, N2, N4, N8) record shape.

    The struct reads the whole fixed part of a record in one call; the group counts,
    already peeked, are skipped as pad bytes so that after the `head` fields the tuple
    alternates id, value, id, value: ids = t[head::2], values = t[head + 1::2].
    """

    __slots__ = ("struct", "size", "n", "widths", "id_offsets", "iow", "_frozen_for")

    def __init__(self, codec: int, counts: tuple[int, int, int, int]) -> None:
        head, id_fmt, cnt_fmt = _HEAD[codec]
        pad = "x" * struct.calcsize(">" + cnt_fmt)
        fmt = [">", _GPS_FMT, head[:-1], pad]  # the N1 count is peeked, not returned
        widths: list[int] = []
        id_offsets: list[int] = []
        off = _HEAD_SIZE[codec]
        isz, csz = _ID_SIZE[codec], _COUNT_SIZE[codec]
        for gi, (w, k) in enumerate(zip(_WIDTHS, counts)):
            fmt.append((id_fmt + _VAL_FMT[w]) * k)
            widths += [w] * k
            for _ in range(k):
                id_offsets.append(off)
                off += isz + w
            if gi < 3 or codec == CODEC_8E:  # skip the next count (N2, N4, N8; NX for 8E)
                fmt.append(pad)
                off += csz
        self.struct = struct.Struct("".join(fmt))
        self.size = self.struct.size
        self.n = len(widths)
        self.widths = tuple(widths)
        self.id_offsets = tuple(id_offsets)
        self.iow: dict[tuple, IoWidths] = {}  # ids -> shared io_width (hot path reads it)
        self._frozen_for = 0

    def io_widths(self, ids: tuple) -> IoWidths:
        """The miss path. Devices repeat a few IO configurations, so caching pays; when
        ids vary per record it does not, so a full cache stops taking new entries for a
        while (keeping the ones it has) before it is cleared and refilled."""
        iow = self.iow
        w = iow.get(ids)
        if w is not None:  # an empty IoWidths is falsy: the hot path's `or` lands here
            return w
        w = IoWidths(zip(ids, self.widths))
        if self._frozen_for:
            self._frozen_for -= 1
            if not self._frozen_for:
                self.drop_io_widths()
        elif len(iow) >= _IOW_PER_SHAPE or _IOW_COUNT[0] >= _IOW_TOTAL or self.n > _IOW_MAX_N:
            self._frozen_for = 4096
        else:
            iow[ids] = w
            _IOW_COUNT[0] += 1
        return w

    def drop_io_widths(self) -> None:
        _IOW_COUNT[0] -= len(self.iow)
        self.iow.clear()


_SHAPES: dict[int, dict[int, _Shape]] = {c: {} for c in _HEAD}
_IOW_COUNT = [0]  # shared io_width dicts cached over all shapes


def _shape(codec: int, counts: tuple[int, int, int, int]) -> _Shape:
    """Compile and cache the shape; the key packs the counts into one int (cheaper to
    hash than a tuple): 8 bits each for Codec 8/16, 16 bits each for 8E."""
    s = _Shape(codec, counts)
    if s.n > _CACHE_MAX_PAIRS:
        return s
    cache = _SHAPES[codec]
    if len(cache) >= _CACHE_MAX:
        for old in cache.values():
            old.drop_io_widths()
        cache.clear()
    bits = 16 if codec == CODEC_8E else 8
    n1, n2, n4, n8 = counts
    cache[((n1 << bits | n2) << bits | n4) << bits | n8] = s
    return s


def _truncated(pos: int, need: int, end: int) -> DecodeError:
    # A count can point far past the data: blame the offset where the data runs out.
    return DecodeError("truncated", min(pos, end),
                       f"need {need} bytes at offset {pos}, the records end at offset {end}")


# Hot loops below peek the group counts without a bounds check per count: positions only
# grow, so a count read at or past `end` always pushes the record end past `end`, and a
# read past the buffer raises IndexError. Either way _walk() re-reads the record with
# every check to say exactly what was truncated; the fast path does one comparison.
_COUNT_AT = {CODEC_8: 26, CODEC_8E: 28, CODEC_16: 28}  # offset of the N1 count in a record


def _walk(buf: bytes, p: int, end: int, codec: int) -> DecodeError:
    """The precise truncation error of the record at p (slow path)."""
    isz, csz = _ID_SIZE[codec], _COUNT_SIZE[codec]
    q = p + _COUNT_AT[codec]
    groups = (1, 2, 4, 8, 0) if codec == CODEC_8E else (1, 2, 4, 8)
    for w in groups:
        if q + csz > end:
            return _truncated(q, csz, end)
        k = int.from_bytes(buf[q:q + csz], "big")
        q += csz
        if w:  # the NX elements themselves are checked by the caller
            if q + k * (isz + w) > end:
                return _truncated(q, k * (isz + w), end)
            q += k * (isz + w)
    return _truncated(q, 1, end)  # not reached for a truncated record


def _record_error(p: int, t: tuple, ids: tuple, io: dict, shape: _Shape, codec: int,
                  lenient: bool, nx: int = 0) -> DecodeError | None:
    """Why the record at p is invalid (slow path), or None if it is fine after all."""
    if len(io) != shape.n:
        seen: set[int] = set()
        for i, off in zip(ids, shape.id_offsets):
            if i in seen:
                return DecodeError("duplicate_io", p + off, f"IO id {i} appears twice in one record")
            seen.add(i)
    if t[1] > 3:
        return DecodeError("bad_priority", p + 8, f"priority {t[1]} > 3")
    if codec == CODEC_16:
        if t[9] > 7:
            return DecodeError("bad_generation_type", p + 26, f"generation type {t[9]} > 7")
        ntot, at = t[10], p + 27
    else:
        ntot, at = t[9], p + 25 if codec == CODEC_8 else p + 26
    if ntot != shape.n + nx and not lenient:
        return DecodeError("count_mismatch", at, f"N total {ntot} but the groups hold {shape.n + nx}")
    return None


def _no_room(p: int, end: int, count: int, codec: int) -> DecodeError:
    return DecodeError("truncated", end, f"{count} records need at least "
                       f"{count * MIN_RECORD[codec]} bytes, the data field holds {end - p}")


def _bad_length(p: int, end: int, count: int) -> DecodeError:
    return DecodeError("bad_length", p, f"{count} records end at offset {p}, but the data "
                       f"field has {end - p} more bytes before Number of Data 2")


def decode_records(buf: bytes, pos: int, end: int, codec: int, count: int,
                   lenient: bool = False) -> tuple[AvlRecord, ...]:
    """Decode `count` records of `codec` from buf[pos:end]; they must fill it exactly.

    Offsets in errors are positions in `buf`. `end` is the position of Number of Data 2.
    """
    if codec == CODEC_8:
        try:
            return _decode_8(buf, pos, end, count, lenient)
        except DecodeError as first:
            if not lenient:
                raise
            try:  # the non-standard N16 variant (protocol notes 5.4)
                return _decode_8_n16(buf, pos, end, count)
            except DecodeError:
                raise first from None
    if codec == CODEC_8E:
        return _decode_8e(buf, pos, end, count, lenient)
    return _decode_16(buf, pos, end, count, lenient)


def _decode_8(buf: bytes, p: int, end: int, count: int, lenient: bool) -> tuple[AvlRecord, ...]:
    if count * 30 > end - p:  # cap the count by the bytes there are
        raise _no_room(p, end, count, CODEC_8)
    cache = _SHAPES[CODEC_8]
    out = []
    append = out.append
    for _ in range(count):
        try:
            n1 = buf[p + 26]
            q = p + 27 + 2 * n1               # N2 count
            n2 = buf[q]
            q += 1 + 3 * n2                   # N4 count
            n4 = buf[q]
            q += 1 + 5 * n4                   # N8 count
            n8 = buf[q]
            q += 1 + 9 * n8                   # end of the record
        except IndexError:
            q = end + 1
        if q > end:
            raise _walk(buf, p, end, CODEC_8)
        shape = cache.get(n1 << 24 | n2 << 16 | n4 << 8 | n8) or _shape(CODEC_8, (n1, n2, n4, n8))
        t = shape.struct.unpack_from(buf, p)
        ids = t[10::2]
        io = dict(zip(ids, t[11::2]))
        n = shape.n
        if len(io) != n or t[1] > 3 or t[9] != n:
            e = _record_error(p, t, ids, io, shape, CODEC_8, lenient)
            if e:
                raise e
        append(AvlRecord(t[0], t[1], t[2] / 1e7, t[3] / 1e7, t[4], t[5], t[6], t[7], t[8],
                         io, shape.iow.get(ids) or shape.io_widths(ids), None))
        p = q
    if p != end:
        raise _bad_length(p, end, count)
    return tuple(out)


def _decode_16(buf: bytes, p: int, end: int, count: int, lenient: bool) -> tuple[AvlRecord, ...]:
    if count * 32 > end - p:  # cap the count by the bytes there are
        raise _no_room(p, end, count, CODEC_16)
    cache = _SHAPES[CODEC_16]
    out = []
    append = out.append
    for _ in range(count):
        try:
            n1 = buf[p + 28]
            q = p + 29 + 3 * n1
            n2 = buf[q]
            q += 1 + 4 * n2
            n4 = buf[q]
            q += 1 + 6 * n4
            n8 = buf[q]
            q += 1 + 10 * n8
        except IndexError:
            q = end + 1
        if q > end:
            raise _walk(buf, p, end, CODEC_16)
        shape = cache.get(n1 << 24 | n2 << 16 | n4 << 8 | n8) or _shape(CODEC_16, (n1, n2, n4, n8))
        t = shape.struct.unpack_from(buf, p)
        ids = t[11::2]
        io = dict(zip(ids, t[12::2]))
        n = shape.n
        if len(io) != n or t[1] > 3 or t[9] > 7 or t[10] != n:
            e = _record_error(p, t, ids, io, shape, CODEC_16, lenient)
            if e:
                raise e
        append(AvlRecord(t[0], t[1], t[2] / 1e7, t[3] / 1e7, t[4], t[5], t[6], t[7], t[8],
                         io, shape.iow.get(ids) or shape.io_widths(ids), t[9]))
        p = q
    if p != end:
        raise _bad_length(p, end, count)
    return tuple(out)


def _decode_8e(buf: bytes, p: int, end: int, count: int, lenient: bool) -> tuple[AvlRecord, ...]:
    if count * 38 > end - p:  # cap the count by the bytes there are
        raise _no_room(p, end, count, CODEC_8E)
    cache = _SHAPES[CODEC_8E]
    nx_head = _NX_HEAD.unpack_from
    out = []
    append = out.append
    for _ in range(count):
        try:
            q = p + 28                        # N1 count (u16)
            n1 = buf[q] << 8 | buf[q + 1]
            q += 2 + 3 * n1
            n2 = buf[q] << 8 | buf[q + 1]
            q += 2 + 4 * n2
            n4 = buf[q] << 8 | buf[q + 1]
            q += 2 + 6 * n4
            n8 = buf[q] << 8 | buf[q + 1]
            q += 2 + 10 * n8                  # NX count (u16)
            nx = buf[q] << 8 | buf[q + 1]
            q += 2
        except IndexError:
            q = end + 1
        if q > end:
            raise _walk(buf, p, end, CODEC_8E)
        shape = cache.get(n1 << 48 | n2 << 32 | n4 << 16 | n8) or _shape(CODEC_8E, (n1, n2, n4, n8))
        t = shape.struct.unpack_from(buf, p)
        ids = t[10::2]
        io = dict(zip(ids, t[11::2]))
        n = shape.n
        if len(io) != n or t[1] > 3:
            e = _record_error(p, t, ids, io, shape, CODEC_8E, True)
            if e:
                raise e
        if nx:
            for _ in range(nx):
                if q + 4 > end:
                    raise _truncated(q, 4, end)
                i, ln = nx_head(buf, q)
                q += 4
                if q + ln > end:
                    raise _truncated(q, ln, end)
                if i in io:
                    raise DecodeError("duplicate_io", q - 4, f"IO id {i} appears twice in one record")
                io[i] = buf[q:q + ln]
                q += ln
        if t[9] != n + nx and not lenient:
            raise DecodeError("count_mismatch", p + 26, f"N total {t[9]} but the groups hold {n + nx}")
        append(AvlRecord(t[0], t[1], t[2] / 1e7, t[3] / 1e7, t[4], t[5], t[6], t[7], t[8],
                         io, shape.iow.get(ids) or shape.io_widths(ids), None))
        p = q
    if p != end:
        raise _bad_length(p, end, count)
    return tuple(out)


# Strict decoders by codec, for callers that dispatch themselves (tcp.py, udp.py).
STRICT = {CODEC_8: _decode_8, CODEC_8E: _decode_8e, CODEC_16: _decode_16}

_GPS = struct.Struct(">" + _GPS_FMT + "BB")  # + event u8, N total u8


def _decode_8_n16(buf: bytes, p: int, end: int, count: int) -> tuple[AvlRecord, ...]:
    """Codec 8 with an N16 group (count u8, [id u8, 16 bytes]*) after N8. Lenient only."""
    out = []
    for _ in range(count):
        if p + 26 > end:
            raise _truncated(p, 26, end)
        t = _GPS.unpack_from(buf, p)
        if t[1] > 3:
            raise DecodeError("bad_priority", p + 8, f"priority {t[1]} > 3")
        q = p + 26
        io: dict[int, int | bytes] = {}
        widths: dict[int, int] = {}
        for w in (1, 2, 4, 8, 16):
            if q >= end:
                raise _truncated(q, 1, end)
            k = buf[q]
            q += 1
            if q + k * (1 + w) > end:
                raise _truncated(q, k * (1 + w), end)
            for _ in range(k):
                i = buf[q]
                if i in io:
                    raise DecodeError("duplicate_io", q, f"IO id {i} appears twice in one record")
                raw = buf[q + 1:q + 1 + w]
                io[i] = raw if w == 16 else int.from_bytes(raw, "big")
                widths[i] = w
                q += 1 + w
        out.append(AvlRecord(t[0], t[1], t[2] / 1e7, t[3] / 1e7, t[4], t[5], t[6], t[7], t[8],
                             io, widths, None))
        p = q
    if p != end:
        raise DecodeError("bad_length", p, f"{count} records end at offset {p}, "
                          f"but the data field has {end - p} more bytes before Number of Data 2")
    return tuple(out)


# ---------------------------------------------------------------------------- encode

_FMB_SIZES = {i: s.size for i, s in IO_DICTIONARY["FMB"].items() if s.size in _VAL_FMT}
_LIMIT = {1: 1 << 8, 2: 1 << 16, 4: 1 << 32, 8: 1 << 64}


def _coord(name: str, deg: object) -> int:
    try:
        raw = round(deg * 1e7)  # type: ignore[operator]
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"{name} {deg!r} is not a finite number of degrees") from e
    if not -(1 << 31) <= raw < (1 << 31):
        raise EncodeError(f"{name} {deg!r} does not fit a signed 32-bit degrees x 1e7")
    return raw


def _width_for(io_id: int, value: int, io_width: dict) -> int:
    """io_width's entry, else the FMB dictionary's size, else the smallest that fits."""
    w = io_width.get(io_id)
    if w is None:
        w = _FMB_SIZES.get(io_id)
        if w is None:
            w = 1 if value < 256 else 2 if value < 65536 else 4 if value < (1 << 32) else 8
    elif w not in _LIMIT:
        raise EncodeError(f"IO {io_id} width {w} is not 1, 2, 4 or 8")
    if not 0 <= value < _LIMIT[w]:
        raise EncodeError(f"IO {io_id} value {value} does not fit {w} unsigned bytes")
    return w


_PACKERS: dict[int, dict[tuple, struct.Struct]] = {c: {} for c in _HEAD}
_BYTES = (bytes, bytearray, memoryview)
_EMPTY: dict = {}


def _packer(codec: int, counts: tuple[int, int, int, int]) -> struct.Struct:
    """GPS part, head (with the counts as values) and every fixed pair, for one shape."""
    cache = _PACKERS[codec]
    s = cache.get(counts)
    if s is None:
        head, id_fmt, cnt_fmt = _HEAD[codec]
        fmt = [">", _GPS_FMT, head]
        for gi, (w, k) in enumerate(zip(_WIDTHS, counts)):
            if gi:
                fmt.append(cnt_fmt)
            fmt.append((id_fmt + _VAL_FMT[w]) * k)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        s = cache[counts] = struct.Struct("".join(fmt))
    return s


def _header(codec: int, r: AvlRecord, id_max: int) -> list:
    """The checked GPS part and event id (+ generation type): EncodeError names the field."""
    h = [_check("timestamp_ms", r.timestamp_ms, 0, (1 << 64) - 1),
         _check("priority", r.priority, 0, 3), _coord("lon", r.lon), _coord("lat", r.lat),
         _check("altitude", r.altitude, -32768, 32767), _check("angle", r.angle, 0, 0xFFFF),
         _check("satellites", r.satellites, 0, 0xFF), _check("speed", r.speed, 0, 0xFFFF),
         _check("event_io_id", r.event_io_id, 0, id_max)]
    if codec == CODEC_16:
        if r.generation_type is None:
            raise EncodeError("Codec 16 records need a generation_type (0..7)")
        h.append(_check("generation_type", r.generation_type, 0, 7))
    elif r.generation_type is not None:
        raise EncodeError(f"generation_type is Codec 16 only (codec {codec})")
    return h


def encode_record(codec: int, r: AvlRecord, n16: bool = False) -> bytes:
    """One record's bytes. `n16`: write the non-standard Codec 8 N16 group."""
    id_max = 0xFF if codec == CODEC_8 else 0xFFFF
    cnt_max = 0xFFFF if codec == CODEC_8E else 0xFF
    g1: list = []
    g2: list = []
    g4: list = []
    g8: list = []
    groups = {1: g1, 2: g2, 4: g4, 8: g8}  # flat id, value, id, value, ...
    nx: list = []
    n16s: list = []
    io_width = r.io_width or _EMPTY
    for io_id, value in (r.io or _EMPTY).items():
        if type(io_id) is not int or not 0 <= io_id <= id_max:
            io_id = _check("IO id", io_id, 0, id_max)
        if type(value) is not int:
            if isinstance(value, _BYTES):
                value = bytes(value)
                if codec == CODEC_8E:
                    if len(value) > 0xFFFF:
                        raise EncodeError(f"NX IO {io_id}: {len(value)} bytes > 65535")
                    nx.append((io_id, value))
                elif codec == CODEC_8 and len(value) == 16:
                    n16s.append((io_id, value))
                else:
                    raise EncodeError(f"IO {io_id}: bytes values are NX (Codec 8E only; "
                                      f"16 bytes for the Codec 8 N16 variant)")
                continue
            value = _check(f"IO {io_id} value", value, 0, (1 << 64) - 1)
        w = io_width.get(io_id) or _FMB_SIZES.get(io_id)
        if w is None or w not in _LIMIT or not 0 <= value < _LIMIT[w]:
            w = _width_for(io_id, value, io_width)  # the smallest width, or the exact error
        g = groups[w]
        g.append(io_id)
        g.append(value)
    if n16s and not n16:
        raise EncodeError("16-byte IO values need the N16 Codec 8 variant")
    counts = (len(g1) >> 1, len(g2) >> 1, len(g4) >> 1, len(g8) >> 1)
    total = sum(counts) + len(nx) + len(n16s)
    if total > cnt_max or max(counts) > cnt_max or len(nx) > cnt_max:
        raise EncodeError(f"{total} IO elements: a count or N total exceeds {cnt_max}")
    try:
        ts, prio, lon, lat = r.timestamp_ms, r.priority, round(r.lon * 1e7), round(r.lat * 1e7)
        alt, angle, sats, speed, event = r.altitude, r.angle, r.satellites, r.speed, r.event_io_id
        gen = r.generation_type
        if not (type(ts) is int and 0 <= ts < 1 << 64 and type(prio) is int and 0 <= prio <= 3
                and -(1 << 31) <= lon < 1 << 31 and -(1 << 31) <= lat < 1 << 31
                and type(alt) is int and -32768 <= alt <= 32767
                and type(angle) is int and 0 <= angle <= 0xFFFF
                and type(sats) is int and 0 <= sats <= 0xFF
                and type(speed) is int and 0 <= speed <= 0xFFFF
                and type(event) is int and 0 <= event <= id_max
                and ((type(gen) is int and 0 <= gen <= 7) if codec == CODEC_16 else gen is None)):
            raise ValueError
        args = [ts, prio, lon, lat, alt, angle, sats, speed, event, total, counts[0]]
        if codec == CODEC_16:
            args.insert(9, gen)
    except (TypeError, ValueError, OverflowError):
        args = _header(codec, r, id_max) + [total, counts[0]]  # raises the precise EncodeError
    args += g1
    args.append(counts[1])
    args += g2
    args.append(counts[2])
    args += g4
    args.append(counts[3])
    args += g8
    out = _packer(codec, counts).pack(*args)
    if codec == CODEC_8E:
        parts = [out, _U16.pack(len(nx))]
        for io_id, value in nx:
            parts.append(_NX_HEAD.pack(io_id, len(value)))
            parts.append(value)
        out = b"".join(parts)
    elif n16:
        parts = [out, _U8.pack(len(n16s))]
        for io_id, value in n16s:
            parts.append(_U8.pack(io_id))
            parts.append(value)
        out = b"".join(parts)
    return out


def _encode_records_slow(codec: int, records) -> bytes:
    """The reference encoder: per record, per IO element, every check by name. The fast
    path below hands anything it is not sure about to this one."""
    if codec not in _HEAD:
        raise EncodeError(f"codec {codec} is not an AVL codec (8, 0x8E, 16)")
    n = len(records)
    if n > 255:
        raise EncodeError(f"{n} records > 255 per packet")
    n16 = codec == CODEC_8 and any(
        isinstance(v, (bytes, bytearray, memoryview)) for r in records for v in (r.io or {}).values())
    body = b"".join(encode_record(codec, r, n16) for r in records)
    return bytes((codec, n)) + body + bytes((n,))


# ------------------------------------------------------------- encode, the fast path
#
# A record's "layout" is everything about its bytes except the values: the codec, its IO
# ids in the order the dict holds them, and each id's width (io_width's, else the FMB
# dictionary's; a record with an id that has neither takes the smallest width its value
# fits, which depends on the value, so it goes the slow way). A _Layout holds the
# record's ids and counts in place with zeros elsewhere (the template) and a Struct whose
# format has pad bytes (zeros) where the ids and counts go: pack() writes only the GPS
# part, the event id (+ generation type) and the values, range-checking each one as the
# slow path's check_int would (both go through __index__), and one big-int OR lays the
# template over it. A packet whose records share one layout (a device sends the same IO
# every record) is one pack() of a Struct compiled for k records of it. Anything struct refuses, and the two fields struct
# cannot range-check (priority 0..3, generation type 0..7 / None), send the whole packet
# to _encode_records_slow, which produces the same bytes or the precise EncodeError.

_LAYOUT_MAX = 512       # layouts per codec (devices repeat a handful)
_MULTI_MAX = 64         # k-record Structs per layout (k = records per packet)


class _Layout:
    __slots__ = ("codec", "keys", "n", "size", "template", "fmt", "one", "multi", "perm", "iow",
                 "row_len")

    def __init__(self, codec: int, keys: tuple, widths: tuple) -> None:
        head, id_fmt, cnt_fmt = _HEAD[codec]
        isz = _ID_SIZE[codec]
        id_max = 0xFF if codec == CODEC_8 else 0xFFFF
        cnt_max = 0xFFFF if codec == CODEC_8E else 0xFF
        groups: list[list[tuple[int, int, int]]] = [[], [], [], []]  # (io id, width, dict pos)
        for pos, (k, w) in enumerate(zip(keys, widths)):
            if type(k) is not int or not 0 <= k <= id_max:
                raise ValueError("IO id")
            groups[_WIDTHS.index(w)].append((k, w, pos))
        counts = [len(g) for g in groups]
        n = sum(counts)
        if n > cnt_max or max(counts) > cnt_max:
            raise ValueError("count")
        # The template: zeros where values go, the counts and ids in place.
        gps_head = head[:-2]  # event id [, generation type]
        fmt = [_GPS_FMT, gps_head, "x" * struct.calcsize(">" + cnt_fmt) * 2]  # N total, N1
        tpl_fmt = [">", _GPS_FMT, gps_head, cnt_fmt, cnt_fmt]
        tpl_args: list[int] = [0] * (8 + len(gps_head)) + [n, counts[0]]
        order: list[int] = []
        id_pad = "x" * isz
        for gi, g in enumerate(groups):
            if gi:
                fmt.append("x" * struct.calcsize(">" + cnt_fmt))
                tpl_fmt.append(cnt_fmt)
                tpl_args.append(counts[gi])
            for k, w, pos in g:
                fmt.append(id_pad + _VAL_FMT[w])
                tpl_fmt.append(id_fmt + _VAL_FMT[w])
                tpl_args += [k, 0]
                order.append(pos)
        template = struct.pack("".join(tpl_fmt), *tpl_args)
        if codec == CODEC_8E:
            template += b"\x00\x00"  # NX count 0
            fmt.append("xx")
        self.codec = codec
        self.keys = keys
        self.n = n
        self.fmt = "".join(fmt)
        self.one = struct.Struct(">" + self.fmt)
        self.size = self.one.size
        assert self.size == len(template)
        self.template = template
        self.multi: dict[int, tuple] = {}
        self.perm = None if order == list(range(n)) else tuple(order)
        self.iow: IoWidths | None = None  # set by row_layout()
        self.row_len = (10 if codec == CODEC_16 else 9) + n

    def packer(self, k: int) -> tuple:
        """(Struct of k records, their template as an int, their size)."""
        s = self.multi.get(k)
        if s is None:
            if len(self.multi) >= _MULTI_MAX:
                self.multi = {}
            st = struct.Struct(">" + self.fmt * k)
            s = self.multi[k] = (st.pack, int.from_bytes(self.template * k, "big"), st.size)
        return s


_LAYOUTS: dict[int, dict[tuple, _Layout | None]] = {c: {} for c in _HEAD}


def _layout(codec: int, keys: tuple, ws: tuple) -> _Layout | None:
    """Compile (and cache) the layout of (keys, io_width's widths); None: slow path."""
    cache = _LAYOUTS[codec]
    key = (keys, ws)
    if key in cache:
        return cache[key]
    widths = []
    lay = None
    for k, w in zip(keys, ws):
        if not w:  # as the slow path: io_width's entry, else the FMB size
            w = _FMB_SIZES.get(k)
        if w not in _LIMIT:
            break
        widths.append(w)
    else:
        try:
            lay = _Layout(codec, keys, tuple(widths))
        except (ValueError, TypeError):
            lay = None
    if len(cache) >= _LAYOUT_MAX:
        cache.clear()
    if all(type(k) is int for k in keys):  # never cache under a key equal to ints but not ints
        cache[key] = lay
    return lay


def _pack(lay: _Layout, k: int, args: list) -> bytes:
    pack, tpl, size = lay.multi.get(k) or lay.packer(k)
    return (int.from_bytes(pack(*args), "big") | tpl).to_bytes(size, "big")


_BY_IOW: dict[int, dict[int, tuple]] = {c: {} for c in _HEAD}
_BY_IOW_MAX = 4096


def _iow_entry(codec: int, iow: IoWidths) -> tuple:
    """(iow, {keys: layout}) for a shared read-only io_width, found by identity: the entry
    holds iow, so its id cannot be reused while the entry lives."""
    memo = _BY_IOW[codec]
    if len(memo) >= _BY_IOW_MAX:
        memo.clear()
    ent = memo[id(iow)] = (iow, {})
    return ent


def _fast_body(codec: int, records) -> bytes | None:
    """The records' bytes if every record has a layout and packs, else None."""
    cache = _LAYOUTS[codec]
    by_iow = _BY_IOW[codec]
    c16 = codec == CODEC_16
    args: list = []
    extend = args.extend
    first = None
    same = True
    lays = []
    for r in records:
        io = r.io
        iow = r.io_width
        keys = tuple(io)
        # A dict key equal to an int but not one (1.0, Decimal(1)) must not borrow an int
        # layout (the slow path refuses it); their sum is then not an int.
        if type(sum(keys)) is not int:
            return None
        if type(iow) is IoWidths:  # decoded records (and the simulator's) share these
            ent = by_iow.get(id(iow))
            if ent is None or ent[0] is not iow:
                ent = _iow_entry(codec, iow)
            lay = ent[1].get(keys, False)
            if lay is False:
                lay = _layout(codec, keys, tuple(map(iow.get, keys)))
                if len(ent[1]) < _IOW_PER_SHAPE:
                    ent[1][keys] = lay
        else:
            key = (keys, tuple(map((iow or _EMPTY).get, keys)))
            lay = cache.get(key, False)
            if lay is False:
                lay = _layout(codec, *key)
        if lay is None:
            return None
        if lay is not first:
            if first is None:
                first = lay
            else:
                same = False
        p = r.priority
        g = r.generation_type
        if not 0 <= p <= 3:
            return None
        if c16:
            if not 0 <= g <= 7:
                return None
            extend((r.timestamp_ms, p, round(r.lon * 1e7), round(r.lat * 1e7), r.altitude,
                    r.angle, r.satellites, r.speed, r.event_io_id, g))
        else:
            if g is not None:
                return None
            extend((r.timestamp_ms, p, round(r.lon * 1e7), round(r.lat * 1e7), r.altitude,
                    r.angle, r.satellites, r.speed, r.event_io_id))
        if lay.perm is None:
            extend(io.values())
        else:
            v = tuple(io.values())
            extend([v[i] for i in lay.perm])
        lays.append(lay)
    if same:
        return _pack(first, len(lays), args)
    out = []
    i = 0
    for lay in lays:
        j = i + (10 if c16 else 9) + lay.n
        out.append(_pack(lay, 1, args[i:j]))
        i = j
    return b"".join(out)


def encode_records(codec: int, records) -> bytes:
    """Number of Data 1 + the records + Number of Data 2 (the AVL part of a data field)."""
    n = len(records)
    if 0 < n <= 255 and codec in _HEAD:
        try:
            body = _fast_body(codec, records)
        except (struct.error, TypeError, ValueError, OverflowError, AttributeError):
            body = None
        if body is not None:
            return b"%c%c%b%c" % (codec, n, body, n)  # codec, N1, records, N2
    return _encode_records_slow(codec, records)



# ------------------------------------------------------------ encode from rows (columns)
#
# For generators that hold records as columns (the simulator): a row is a plain tuple
#   (timestamp_ms, priority, lon_e7, lat_e7, altitude, angle, satellites, speed,
#    event_io_id[, generation_type (Codec 16)], *values in the layout's id order)
# with the coordinates as the wire's signed degrees x 1e7, every field an int. No
# AvlRecord, no dict: a packet of rows of one layout is one pack. The bytes are those
# encode() gives for record_from_row() of the same rows (tests check it).


def row_layout(codec: int, io_width: dict[int, int]) -> _Layout:
    """The layout whose rows carry these IO ids, in this order, at these widths (1/2/4/8).
    The records record_from_row() makes share one read-only IoWidths of it."""
    if codec not in _HEAD:
        raise EncodeError(f"codec {codec} is not an AVL codec (8, 0x8E, 16)")
    keys = tuple(io_width)
    ws = tuple(io_width.values())
    if not all(w in _LIMIT for w in ws):
        raise EncodeError(f"row layout widths must be 1, 2, 4 or 8, got {ws}")
    lay = _layout(codec, keys, ws)
    if lay is None:
        raise EncodeError(f"no row layout for codec {codec} IO ids {keys} (ids out of range "
                          f"or too many)")
    if lay.perm is not None:
        raise EncodeError("a row layout lists its ids grouped by width: the 1-byte ones "
                          "first, then 2, 4 and 8 (the wire order)")
    if lay.iow is None:
        lay.iow = IoWidths(zip(keys, ws))
    return lay


def record_from_row(lay: _Layout, row: tuple) -> AvlRecord:
    """The AvlRecord a row stands for (encode() of it gives encode_rows()'s bytes)."""
    if lay.codec == CODEC_16:
        return AvlRecord(row[0], row[1], row[2] / 1e7, row[3] / 1e7, row[4], row[5], row[6],
                         row[7], row[8], dict(zip(lay.keys, row[10:])), lay.iow, row[9])
    return AvlRecord(row[0], row[1], row[2] / 1e7, row[3] / 1e7, row[4], row[5], row[6],
                     row[7], row[8], dict(zip(lay.keys, row[9:])), lay.iow, None)


def _rows_error(codec: int, rows, lays) -> EncodeError:
    """Why rows do not encode (slow path): the reference encoder's error if it has one."""
    for i, (row, lay) in enumerate(zip(rows, lays)):
        if type(row) is not tuple or len(row) != lay.row_len:
            return EncodeError(f"row {i} must be a tuple of {lay.row_len} ints")
        if not all(type(v) is int for v in row):
            return EncodeError(f"row {i} holds a value that is not an int")
        if lay.codec != codec:
            return EncodeError(f"row {i}: its layout is for codec {lay.codec}, not {codec}")
    try:
        _encode_records_slow(codec, [record_from_row(lay, row) for row, lay in zip(rows, lays)])
    except EncodeError as e:
        return e
    return EncodeError("rows do not encode")  # not reached: struct and the slow path agree


_PRIORITIES = frozenset(range(4))
_GENERATIONS = frozenset(range(8))
_COL1 = operator.itemgetter(1)
_COL9 = operator.itemgetter(9)


def _pack_rows(codec: int, lay: _Layout, rows) -> bytes:
    """Rows of one layout: one pack per row at C speed (starmap; struct checks each row's
    length and ranges), the template OR-ed over the lot once."""
    if lay.codec != codec or not set(map(_COL1, rows)) <= _PRIORITIES or (
            codec == CODEC_16 and not set(map(_COL9, rows)) <= _GENERATIONS):
        raise ValueError
    k = len(rows)
    _, tpl, size = lay.multi.get(k) or lay.packer(k)
    return (int.from_bytes(b"".join(starmap(lay.one.pack, rows)), "big") | tpl).to_bytes(size, "big")


def encode_rows(codec: int, rows, lays) -> bytes:
    """Number of Data 1 + the rows' records + Number of Data 2 (as encode_records()).

    `lays`: one layout (from row_layout) for every row, or a sequence, one per row."""
    n = len(rows)
    single = type(lays) is _Layout
    if not 0 < n <= 255 or codec not in _HEAD:
        return encode_records(codec, [record_from_row(lay, r) for r, lay in
                                      zip(rows, [lays] * n if single else lays)])
    try:
        if single:
            body = _pack_rows(codec, lays, rows)
        else:
            parts = []
            i = 0
            while i < n:  # runs of one layout
                lay = lays[i]
                j = i + 1
                while j < n and lays[j] is lay:
                    j += 1
                parts.append(_pack_rows(codec, lay, rows[i:j]))
                i = j
            body = b"".join(parts)
    except (struct.error, TypeError, ValueError, OverflowError, IndexError):
        raise _rows_error(codec, rows, [lays] * n if single else lays) from None
    return b"%c%c%b%c" % (codec, n, body, n)


# --------------------------------------------------------- encode from numpy columns
#
# A whole batch of records (the simulator: one device-day) as columns, one per row
# field, encoded at numpy speed: each layout's template repeated per record (ids and
# counts in place), every value column range-checked by min/max and written big-endian
# into its byte offsets. Gives the records' bytes back to back and where each starts;
# a packet is then a slice (avl_part). The bytes are encode_rows()'s (tests check it).

_NP_FIELD = {"Q": (">u8", 0, (1 << 64) - 1), "B": ("u1", 0, 0xFF), "H": (">u2", 0, 0xFFFF),
             "I": (">u4", 0, 0xFFFFFFFF), "i": (">i4", -(1 << 31), (1 << 31) - 1),
             "h": (">i2", -32768, 32767)}
_NP_SIZE = {"Q": 8, "B": 1, "H": 2, "I": 4, "i": 4, "h": 2}
_HEAD_NAMES = ("timestamp_ms", "priority", "lon_e7", "lat_e7", "altitude", "angle", "satellites",
               "speed", "event_io_id")


def _np_fields(lay: _Layout) -> list[tuple[int, str, int, int]]:
    """(byte offset, numpy dtype, lo, hi) of each row field, in row order."""
    ent = _NP_CACHE.get(id(lay))
    fields = ent[1] if ent is not None and ent[0] is lay else None
    if fields is None:
        fields, off = [], 0
        for ch in lay.fmt:
            if ch == "x":
                off += 1
                continue
            dt, lo, hi = _NP_FIELD[ch]
            fields.append((off, dt, lo, hi))
            off += _NP_SIZE[ch]
        assert off == lay.size and len(fields) == lay.row_len
        if len(_NP_CACHE) >= _LAYOUT_MAX:
            _NP_CACHE.clear()
        _NP_CACHE[id(lay)] = (lay, fields)
    return fields


_NP_CACHE: dict[int, tuple] = {}  # id(layout) -> (layout, fields): holds the layout alive


def _column_name(codec: int, lay: _Layout, j: int) -> str:
    if j < 9:
        return _HEAD_NAMES[j]
    if codec == CODEC_16 and j == 9:
        return "generation_type"
    return f"IO {lay.keys[j - (10 if codec == CODEC_16 else 9)]} value"


def encode_columns(codec: int, lays, which, cols) -> tuple[bytes, list[int]]:
    """Records given as columns -> (their bytes back to back, n + 1 start offsets).

    `cols`: integer numpy arrays (or lists), one per row field (see encode_rows) of the
    layout with the most IO values; `lays`: row layouts whose ids are prefixes of that
    one's; `which`: None (every record is lays[0]) or, per record, the index of its
    layout in `lays`. EncodeError names the first field out of range."""
    import numpy as np  # only the columnar path needs numpy

    lays = list(lays)
    if codec not in _HEAD or any(lay.codec != codec for lay in lays):
        raise EncodeError(f"layouts for codec {codec} only")
    cols = [np.asarray(c) for c in cols]
    n = len(cols[0]) if cols else 0
    widest = max(lays, key=lambda lay: lay.row_len)
    if len(cols) != widest.row_len or any(len(c) != n for c in cols):
        raise EncodeError(f"{widest.row_len} columns of {n} records expected")
    for lay in lays:
        if widest.keys[:lay.n] != lay.keys:
            raise EncodeError("every layout's ids must be a prefix of the widest one's")
    if which is None:
        which_a = None
        sizes = np.full(n, lays[0].size, dtype=np.int64)
    else:
        which_a = np.asarray(which, dtype=np.int64)
        sizes = np.array([lay.size for lay in lays], dtype=np.int64)[which_a]
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    buf = np.empty(int(off[-1]), dtype=np.uint8)
    for li, lay in enumerate(lays):
        mask = None if which_a is None else which_a == li
        k = n if mask is None else int(np.count_nonzero(mask))
        if not k:
            continue
        raw = np.frombuffer(lay.template * k, dtype=np.uint8).reshape(k, lay.size).copy()
        for j, (o, dt, lo, hi) in enumerate(_np_fields(lay)):
            c = cols[j] if mask is None else cols[j][mask]
            if c.dtype.kind not in "iu":
                raise EncodeError(f"{_column_name(codec, lay, j)}: integer columns only, got {c.dtype}")
            if j == 1:
                lo, hi = 0, 3
            elif j == 9 and codec == CODEC_16:
                lo, hi = 0, 7
            cmin, cmax = c.min(), c.max()
            if cmin < lo or cmax > hi:
                bad = int(np.flatnonzero((c < lo) | (c > hi))[0])
                raise EncodeError(f"{_column_name(codec, lay, j)} {c[bad]} out of range {lo}..{hi} "
                                  f"(record {bad} of layout {li})")
            w = int(dt[-1])
            raw[:, o:o + w] = c.astype(dt).view(np.uint8).reshape(k, w)
        if mask is None:
            buf[:] = raw.reshape(-1)
        else:
            starts = off[:-1][mask]
            buf[(starts[:, None] + np.arange(lay.size)).reshape(-1)] = raw.reshape(-1)
    return buf.tobytes(), off.tolist()


def avl_part(codec: int, n: int, records: bytes) -> bytes:
    """Number of Data 1 + n records already encoded (encode_columns) + Number of Data 2."""
    if codec not in _HEAD:
        raise EncodeError(f"codec {codec} is not an AVL codec (8, 0x8E, 16)")
    if not 0 <= n <= 255:
        raise EncodeError(f"{n} records > 255 per packet")
    return b"%c%c%b%c" % (codec, n, records, n)

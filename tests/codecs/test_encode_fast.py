"""The encoder's fast path (one cached layout per record shape, one pack per packet)
against the reference per-field encoder: same bytes, or the same EncodeError."""
from __future__ import annotations

import dataclasses
import sys
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetcloak.codecs import EncodeError, avl
from fleetcloak.codecs.packets import AvlRecord

S = sys.modules["fleetcloak_codec_strategies"]
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(f, codec, records):
    try:
        return f(codec, records)
    except EncodeError as e:
        return ("EncodeError", str(e))
    except Exception as e:  # noqa: BLE001 - whatever the reference does, the fast path must too
        return (type(e).__name__, str(e))


def _same(codec, records):
    assert _outcome(avl.encode_records, codec, records) == _outcome(avl._encode_records_slow, codec, records)


@PROPS
@given(S.avl_packets(max_records=6))
def test_fast_path_matches_the_reference(p):
    _same(p.codec, p.records)
    _same(p.codec, p.records * 3)  # several records of one layout: one pack


_BAD_FIELDS = {
    "priority": [4, -1, True, 2.0, None], "timestamp_ms": [-1, 1 << 64, 1.5, True],
    "lon": [180.0, 215.0, float("nan"), float("inf"), "x", 1], "lat": [-215.0, 90],
    "altitude": [40000, -40000, 1.0], "angle": [70000, -1], "satellites": [256, False],
    "speed": [1 << 16], "event_io_id": [256, 70000, -1, True], "generation_type": [None, 8, 0, 7, -1, 2.0],
}


@PROPS
@given(S.avl_packets(max_records=3), st.data())
def test_fast_path_matches_the_reference_on_bad_fields(p, data):
    if not p.records:
        return
    field = data.draw(st.sampled_from(sorted(_BAD_FIELDS)))
    value = data.draw(st.sampled_from(_BAD_FIELDS[field]))
    i = data.draw(st.integers(0, len(p.records) - 1))
    recs = list(p.records)
    recs[i] = dataclasses.replace(recs[i], **{field: value})
    _same(p.codec, recs)


@PROPS
@given(S.avl_packets(max_records=3), st.data())
def test_fast_path_matches_the_reference_on_odd_io(p, data):
    if not p.records:
        return
    i = data.draw(st.integers(0, len(p.records) - 1))
    r = p.records[i]
    io, iow = dict(r.io), dict(r.io_width)
    kind = data.draw(st.sampled_from(["drop_width", "zero_width", "bad_width", "big_value", "neg_value",
                                      "bool_value", "float_value", "float_key", "decimal_key", "bool_key",
                                      "bytes_value", "huge_key"]))
    k = data.draw(st.sampled_from(sorted(io))) if io else 1
    if kind == "drop_width":
        iow.pop(k, None)
    elif kind == "zero_width":
        iow[k] = 0
    elif kind == "bad_width":
        iow[k] = 3
    elif kind == "big_value":
        io[k] = 1 << 64
    elif kind == "neg_value":
        io[k] = -1
    elif kind == "bool_value":
        io[k] = True
    elif kind == "float_value":
        io[k] = 1.0
    elif kind in ("float_key", "decimal_key", "bool_key"):
        v = io.pop(k, 0)
        io[{"float_key": 1.0, "decimal_key": Decimal(1), "bool_key": True}[kind]] = v
    elif kind == "bytes_value":
        io[k] = b"\x01" * 16
    else:
        io[70000] = 1
    recs = list(p.records)
    recs[i] = AvlRecord(r.timestamp_ms, r.priority, r.lon, r.lat, r.altitude, r.angle, r.satellites,
                        r.speed, r.event_io_id, io, iow, r.generation_type)
    _same(p.codec, recs)
    # the same IO on a clean record first, so a layout for int keys is cached already
    _same(p.codec, [dataclasses.replace(p.records[0], io={1: 5}, io_width={1: 1})] + recs)


# ------------------------------------------------------------------ encode_rows

from fleetcloak.codecs import AvlPacket, decode, encode  # noqa: E402
from fleetcloak.codecs.teltonika import encode_rows  # noqa: E402


@st.composite
def _row_packets(draw):
    codec = draw(st.sampled_from([8, 0x8E, 16]))
    id_max = 0xFF if codec == 8 else 0xFFFF
    ids = draw(st.lists(st.integers(0, id_max), unique=True, max_size=10))
    widths = [draw(st.sampled_from([1, 2, 4, 8])) for _ in ids]
    iow = dict(sorted(zip(ids, widths), key=lambda kv: kv[1]))  # grouped by width: the wire order
    lay = avl.row_layout(codec, iow)
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        head = [draw(st.integers(0, (1 << 64) - 1)), draw(st.integers(0, 3)),
                draw(st.integers(-(1 << 31), (1 << 31) - 1)), draw(st.integers(-(1 << 31), (1 << 31) - 1)),
                draw(st.integers(-32768, 32767)), draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 255)),
                draw(st.integers(0, 0xFFFF)), draw(st.integers(0, id_max))]
        if codec == 16:
            head.append(draw(st.integers(0, 7)))
        rows.append(tuple(head + [draw(st.integers(0, (1 << (8 * w)) - 1)) for w in iow.values()]))
    return codec, lay, rows


@PROPS
@given(_row_packets(), st.sampled_from(["tcp", "udp"]))
def test_encode_rows_is_encode_of_the_records_the_rows_stand_for(case, transport):
    codec, lay, rows = case
    recs = tuple(avl.record_from_row(lay, r) for r in rows)
    imei = "356307042441013" if transport == "udp" else None
    pkt = AvlPacket(codec, recs, transport, imei, 7 if imei else None, 9 if imei else None, 1 if imei else None)
    frame = encode_rows(codec, rows, lay, transport, imei, pkt.packet_id, pkt.avl_packet_id, pkt.packet_type)
    assert frame == encode(pkt)
    assert encode_rows(codec, rows, [lay] * len(rows), transport, imei, pkt.packet_id, pkt.avl_packet_id,
                       pkt.packet_type) == frame
    assert decode(frame, transport) == pkt


@PROPS
@given(_row_packets(), st.data())
def test_encode_rows_refuses_what_encode_refuses(case, data):
    codec, lay, rows = case
    i = data.draw(st.integers(0, len(rows) - 1))
    col = data.draw(st.integers(0, len(rows[i]) - 1))
    bad = data.draw(st.sampled_from([-1, 4, 8, 256, 1 << 16, 1 << 32, 1 << 64, -(1 << 31) - 1, 1 << 31, 1.0, None]))
    row = list(rows[i])
    row[col] = bad
    rows = rows[:i] + [tuple(row)] + rows[i + 1:]
    try:
        want = encode(AvlPacket(codec, tuple(avl.record_from_row(lay, r) for r in rows)))
    except Exception:  # noqa: BLE001
        want = None
    if want is not None and all(type(v) is int for v in row):
        assert encode_rows(codec, rows, lay) == want
    else:
        try:
            encode_rows(codec, rows, lay)
        except EncodeError:
            pass
        else:
            raise AssertionError(f"row {row} encoded")


# --------------------------------------------------------------- encode_columns

@PROPS
@given(_row_packets(), st.data())
def test_encode_columns_gives_encode_rows_bytes(case, data):
    import numpy as np

    codec, lay, rows = case
    n = len(rows)
    cols = [np.array([r[j] for r in rows], dtype=np.uint64 if j == 0 or j >= (10 if codec == 16 else 9)
                     else np.int64) for j in range(lay.row_len)]
    blob, off = avl.encode_columns(codec, [lay], None, cols)
    assert avl.avl_part(codec, n, blob) == avl.encode_rows(codec, rows, lay)
    assert off == [i * lay.size for i in range(n + 1)]
    # two layouts, the narrower one a prefix of the other: each record takes its own
    if lay.n:
        keys = list(lay.iow)
        narrow = avl.row_layout(codec, {k: lay.iow[k] for k in keys[:-1]})
        which = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
        lays = [lay, narrow]
        blob, off = avl.encode_columns(codec, lays, which, cols)
        want = [avl.encode_rows(codec, [r[:lays[w].row_len]], lays[w])[2:-1] for r, w in zip(rows, which)]
        assert blob == b"".join(want)
        assert off[1:] == list(np.cumsum([len(b) for b in want]))


@PROPS
@given(_row_packets(), st.data())
def test_encode_columns_refuses_out_of_range(case, data):
    import numpy as np
    import pytest

    codec, lay, rows = case
    j = data.draw(st.integers(0, lay.row_len - 1))
    i = data.draw(st.integers(0, len(rows) - 1))
    cols = [[r[c] for r in rows] for c in range(lay.row_len)]
    fmt_lo_hi = avl._np_fields(lay)[j]
    lo, hi = (0, 3) if j == 1 else (0, 7) if (j == 9 and codec == 16) else fmt_lo_hi[2:]
    cols[j][i] = data.draw(st.sampled_from([lo - 1, hi + 1]))
    arrs = [np.array(c, dtype=object if any(v < -(1 << 63) or v >= (1 << 63) for v in c) else np.int64)
            for c in cols]
    with pytest.raises(EncodeError):
        avl.encode_columns(codec, [lay], None, arrs)

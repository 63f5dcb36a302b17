"""Every published packet in tests/vectors/teltonika_public.json decodes to its stated
values, re-encodes to the same bytes, and every malformed one fails with the right reason."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetcloak.codecs import (AvlPacket, DecodeError, GprsPacket, ImeiLogin, decode, encode,
                               encode_tcp_ack, encode_udp_ack, login_reply, udp_ack_for)
from fleetcloak.codecs.crc import crc16

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" /
                      "teltonika_public.json").read_text())
BY_KIND = {k: [v for v in VECTORS if v["kind"] == k] for k in ("avl", "command", "imei", "malformed")}
# What a strict decoder must say about each published broken example.
MALFORMED_REASON = {
    "wiki-c16-udp-original": "truncated",        # UDP length 0x015B, datagram of 74 bytes
    "wiki-c14-nack-published": "crc_mismatch",   # IMEI edited without recomputing the CRC
    "wiki-c8e-udp-example-broken": "truncated",  # Codec 8 body under codec id 0x8E
}


def _ids(vs):
    return [v["id"] for v in vs]


def test_vector_file_covers_every_kind():
    assert len(VECTORS) == 24
    assert set(MALFORMED_REASON) == {v["id"] for v in BY_KIND["malformed"]}


@pytest.mark.parametrize("v", BY_KIND["avl"], ids=_ids(BY_KIND["avl"]))
def test_avl_vector(v):
    frame = bytes.fromhex(v["hex"])
    exp = v["expected"]
    p = decode(frame, v["transport"])
    assert isinstance(p, AvlPacket)
    assert p.codec == v["codec"] and p.transport == v["transport"]
    assert len(p.records) == exp["count"]
    if v["transport"] == "tcp":
        assert int.from_bytes(frame[4:8], "big") == exp["data_field_length"]
        assert crc16(frame[8:-4]) == exp["crc16"]
        assert encode_tcp_ack(len(p.records)).hex() == exp["server_ack_hex"]
        assert p.imei is None
    else:
        assert (p.imei, p.packet_id, p.avl_packet_id, p.packet_type) == (
            exp["imei"], exp["packet_id"], exp["avl_packet_id"], exp["packet_type"])
        assert encode(udp_ack_for(p)).hex().upper() == exp["ack_hex"]
        assert encode_udp_ack(p.packet_id, p.avl_packet_id, len(p.records)).hex().upper() == exp["ack_hex"]
    for r, e in zip(p.records, exp["records"]):
        for name in ("timestamp_ms", "priority", "lon", "lat", "altitude", "angle",
                     "satellites", "speed", "event_io_id"):
            assert getattr(r, name) == e[name], name
        assert round(r.lon * 1e7) == e["lon_raw"] and round(r.lat * 1e7) == e["lat_raw"]
        assert r.generation_type == e.get("generation_type")
        assert r.gps_valid == e["gps_valid"]
        want = {int(k): (bytes.fromhex(x) if isinstance(x, str) else x) for k, x in e["io"].items()}
        assert r.io == want
        assert list(r.io) == [int(k) for k in e["io"]]  # wire order
        sizes = {int(k): s for k, s in e["io_size"].items() if s != "X"}
        assert r.io_width == sizes
        assert len(r.io) == e["n_total_io"]
    assert encode(p) == frame


@pytest.mark.parametrize("v", BY_KIND["command"], ids=_ids(BY_KIND["command"]))
def test_command_vector(v):
    frame = bytes.fromhex(v["hex"])
    exp = v["expected"]
    p = decode(frame)
    assert isinstance(p, GprsPacket) and p.codec == v["codec"]
    assert len(p.messages) == exp["count"] == len(exp["messages"])
    assert crc16(frame[8:-4]) == exp["crc16"]
    for m, e in zip(p.messages, exp["messages"]):
        assert m.type == e["type"]
        assert m.payload.hex() == e["payload_hex"]
        assert m.text == e.get("text")
        assert m.imei == e.get("imei")
        assert m.timestamp == e.get("timestamp_s")
        prefix = {12: 0, 13: 4, 14: 8, 15: 12}[p.codec]
        assert len(m.payload) + prefix == e["size"]
    assert encode(p) == frame


@pytest.mark.parametrize("v", BY_KIND["imei"], ids=_ids(BY_KIND["imei"]))
def test_imei_vector(v):
    frame = bytes.fromhex(v["hex"])
    p = decode(frame)
    assert p == ImeiLogin(v["expected"]["imei"])
    assert encode(p) == frame
    assert login_reply(True).hex() == v["expected"]["server_reply_accept_hex"]
    assert login_reply(False).hex() == v["expected"]["server_reply_reject_hex"]


@pytest.mark.parametrize("v", BY_KIND["malformed"], ids=_ids(BY_KIND["malformed"]))
def test_malformed_vector(v):
    frame = bytes.fromhex(v["hex"])
    with pytest.raises(DecodeError) as ei:
        decode(frame, v["transport"])
    assert ei.value.reason == MALFORMED_REASON[v["id"]]
    assert 0 <= ei.value.offset <= len(frame)
    # Lenient mode does not relax lengths or the CRC either.
    with pytest.raises(DecodeError):
        decode(frame, v["transport"], lenient=True)


def test_nack_vector_decodes_without_crc_check():
    v = next(v for v in VECTORS if v["id"] == "wiki-c14-nack-published")
    p = decode(bytes.fromhex(v["hex"]), check_crc=False)
    (m,) = p.messages
    assert m.type == 0x11 and m.payload == b"" and m.imei.endswith("452468")


def test_c16_udp_fixed_equals_original_but_length():
    fixed = bytes.fromhex(next(v for v in VECTORS if v["id"] == "wiki-c16-udp-fixed-len")["hex"])
    orig = bytes.fromhex(next(v for v in VECTORS if v["id"] == "wiki-c16-udp-original")["hex"])
    assert fixed[2:] == orig[2:] and decode(fixed, "udp").records[0].generation_type == 5

"""Teltonika wire formats, sans-IO: bytes in, values out, and back.

    decode(frame, transport="tcp", *, lenient=False, check_crc=True) -> packet
    encode(packet, transport=None) -> bytes
    TcpFramer: feed() TCP stream bytes, get whole frames (or a DecodeError) back.
    decode_batch(frames) -> AvlBatch: columns for the stream worker (batch.py).

See docs/codecs.md.
"""
from __future__ import annotations

from .errors import REASONS, DecodeError, EncodeError
from .framing import NEED_DATA, TcpFramer
from .packets import (AVL_CODECS, CODEC_8, CODEC_8E, CODEC_12, CODEC_13, CODEC_14, CODEC_15,
                      CODEC_16, GPRS_CODECS, MSG_CODEC15, MSG_COMMAND, MSG_NACK, MSG_RESPONSE,
                      AvlPacket, AvlRecord, GprsMessage, GprsPacket, ImeiLogin, KeepAlive,
                      Packet, TcpAck, UdpAck)
from .tcp import decode_login_reply, decode_tcp_ack
from .teltonika import (decode, encode, encode_tcp_ack, encode_udp_ack, login_reply,
                        udp_ack_for)
from .udp import decode_ack as decode_udp_ack



def __getattr__(name: str):
    # decode_batch/AvlBatch come from batch.py (C extension + numpy). Resolved on first
    # use, so `fleetcloak decode` and other light paths never import numpy (PEP 562).
    if name in ("decode_batch", "AvlBatch"):
        try:  # the columnar decoder may not be built yet
            from .batch import AvlBatch, decode_batch
        except ImportError as e:
            raise AttributeError(f"fleetcloak.codecs.{name} is unavailable: {e}") from e
        globals().update(decode_batch=decode_batch, AvlBatch=AvlBatch)
        return globals()[name]
    raise AttributeError(f"module 'fleetcloak.codecs' has no attribute {name!r}")

__all__ = [
    "decode", "encode", "decode_batch", "AvlBatch", "TcpFramer", "NEED_DATA",
    "DecodeError", "EncodeError", "REASONS",
    "encode_tcp_ack", "encode_udp_ack", "udp_ack_for", "login_reply",
    "decode_tcp_ack", "decode_udp_ack", "decode_login_reply",
    "AvlPacket", "AvlRecord", "GprsMessage", "GprsPacket", "ImeiLogin", "KeepAlive",
    "TcpAck", "UdpAck", "Packet",
    "CODEC_8", "CODEC_8E", "CODEC_16", "CODEC_12", "CODEC_13", "CODEC_14", "CODEC_15",
    "AVL_CODECS", "GPRS_CODECS", "MSG_COMMAND", "MSG_RESPONSE", "MSG_NACK", "MSG_CODEC15",
]

"""The public entry points: decode any frame a tracker sends, encode any packet.

decode() picks the structure from the transport and the first bytes (TCP: login when
the first two bytes are > 0, keep-alive for a lone FF, else a data frame whose codec id
says AVL or GPRS); encode() is its exact inverse. The layouts live in tcp.py, udp.py,
avl.py and gprs.py.
"""
from __future__ import annotations

from . import avl, tcp, udp
from .errors import EncodeError
from .packets import (AvlPacket, GprsPacket, ImeiLogin, KeepAlive, Packet, TcpAck, UdpAck)

login_reply = tcp.login_reply
encode_tcp_ack = tcp.encode_tcp_ack
encode_udp_ack = udp.encode_udp_ack
udp_ack_for = udp.udp_ack_for
_decode_tcp = tcp.decode
_decode_udp = udp.decode
_frame_data = tcp.frame_data
_avl_rows = tcp.avl.encode_rows


def decode(frame: bytes, transport: str = "tcp", *, lenient: bool = False,
           check_crc: bool = True) -> Packet:
    """Decode one TCP frame or one UDP datagram; raise DecodeError for anything else.

    Strict by default. `lenient` accepts what real devices are known to send: Codec 13
    with an 8-byte ms timestamp, the Codec 8 N16 group, N total != the groups' sum, and
    any message type on Codec 12/13. The CRC stays checked unless `check_crc=False`.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    if transport == "tcp":
        return _decode_tcp(frame, lenient, check_crc)
    if transport == "udp":
        return _decode_udp(frame, lenient)
    raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")


def encode(packet: Packet | TcpAck | UdpAck, transport: str | None = None) -> bytes:
    """The exact bytes of `packet` (AvlPacket on its own transport unless one is given)."""
    if isinstance(packet, AvlPacket):
        t = transport or packet.transport
        if t == "tcp":
            return tcp.encode_avl(packet)
        if t == "udp":
            return udp.encode(packet)
        raise EncodeError(f"transport must be 'tcp' or 'udp', not {t!r}")
    if transport not in (None, "tcp") and not isinstance(packet, UdpAck):
        raise EncodeError(f"{type(packet).__name__} is sent over TCP only")
    if isinstance(packet, GprsPacket):
        return tcp.encode_gprs(packet)
    if isinstance(packet, ImeiLogin):
        return tcp.encode_login(packet)
    if isinstance(packet, KeepAlive):
        return tcp.KEEPALIVE_BYTE
    if isinstance(packet, TcpAck):
        return tcp.encode_tcp_ack(packet.count)
    if isinstance(packet, UdpAck):
        return udp.encode_ack(packet)
    raise EncodeError(f"cannot encode {type(packet).__name__}")


def encode_rows(codec: int, rows, lays, transport: str = "tcp", imei: str | None = None,
                packet_id: int | None = None, avl_packet_id: int | None = None,
                packet_type: int | None = None) -> bytes:
    """encode() of an AvlPacket given as rows (plain int tuples) instead of AvlRecords.

    The bytes are encode(AvlPacket(codec, tuple(record_from_row(lay, r) ...), transport,
    imei, packet_id, avl_packet_id, packet_type)); see avl.encode_rows for the row shape
    and avl.row_layout for `lays` (one layout, or one per row)."""
    if transport == "tcp":
        return _frame_data(_avl_rows(codec, rows, lays))
    if transport == "udp":
        return udp.encode_rows(codec, rows, lays, imei, 0 if packet_id is None else packet_id,
                               0 if avl_packet_id is None else avl_packet_id,
                               1 if packet_type is None else packet_type)
    raise EncodeError(f"transport must be 'tcp' or 'udp', not {transport!r}")


def frame_records(codec: int, n: int, records: bytes, transport: str = "tcp", imei: str | None = None,
                  packet_id: int | None = None, avl_packet_id: int | None = None,
                  packet_type: int | None = None) -> bytes:
    """The frame (TCP) or datagram (UDP) around n records already encoded by
    avl.encode_columns (a slice of its bytes): what encode_rows gives for their rows."""
    if transport == "tcp":
        return _frame_data(avl.avl_part(codec, n, records))
    if transport == "udp":
        return udp.datagram_checked(avl.avl_part(codec, n, records), imei,
                                    0 if packet_id is None else packet_id,
                                    1 if packet_type is None else packet_type,
                                    0 if avl_packet_id is None else avl_packet_id)
    raise EncodeError(f"transport must be 'tcp' or 'udp', not {transport!r}")

"""The values the codecs decode to and encode from.

Plain dataclasses: comparable (property tests check decode(encode(p)) == p), cheap to
build. All are frozen except AvlRecord and AvlPacket: a frozen dataclass's __init__
goes through object.__setattr__ per field and costs ~1.9 us against ~0.3 us for a plain
slotted one (a third of the per-record decode budget; ~0.9 us per frame for the
packet). Treat them as read-only all the same. Field names are the `fleetcloak decode`
JSON contract (shared/DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Codec ids as they appear on the wire (and in the JSON contract: 8E is 142).
CODEC_8 = 0x08
CODEC_8E = 0x8E
CODEC_16 = 0x10
CODEC_12 = 0x0C
CODEC_13 = 0x0D
CODEC_14 = 0x0E
CODEC_15 = 0x0F
AVL_CODECS = frozenset({CODEC_8, CODEC_8E, CODEC_16})
GPRS_CODECS = frozenset({CODEC_12, CODEC_13, CODEC_14, CODEC_15})

# GPRS message types.
MSG_COMMAND = 0x05
MSG_RESPONSE = 0x06
MSG_NACK = 0x11        # Codec 14: the IMEI is not the device's own
MSG_CODEC15 = 0x0B

IoValue = int | bytes


@dataclass(slots=True, eq=True)
class AvlRecord:
    """One AVL record. lat/lon in degrees (wire: signed int32 of degrees x 1e7).

    `io` maps IO id -> value in wire order: fixed-size values as unsigned ints, NX (and
    the non-standard Codec 8 N16 group) values as bytes. `io_width` gives the wire width
    of each fixed-size value (1, 2, 4 or 8; 16 for N16 bytes) so encode can invert
    decode byte for byte; ids missing from it are encoded at the IO dictionary's size,
    or the smallest width that holds the value. A decoded record's io_width is shared
    with the other records of the same shape and ids and is read-only (avl.IoWidths,
    a dict subclass): copy it with dict(...) to change it.
    """

    timestamp_ms: int
    priority: int
    lon: float
    lat: float
    altitude: int
    angle: int
    satellites: int
    speed: int
    event_io_id: int
    io: dict[int, IoValue] = field(default_factory=dict, hash=False)
    io_width: dict[int, int] = field(default_factory=dict, hash=False, repr=False)
    generation_type: int | None = None  # Codec 16 only

    @property
    def gps_valid(self) -> bool:
        # traccar's rule (protocol notes 4.1): a record made without a fix has 0 satellites.
        return self.satellites != 0


@dataclass(slots=True, eq=True)
class AvlPacket:
    """An AVL data packet: a TCP frame or a UDP datagram with its records.

    UDP-only fields (imei, packet_id, avl_packet_id, packet_type) are None on TCP,
    where the IMEI comes from the session's login instead.
    """

    codec: int
    records: tuple[AvlRecord, ...]
    transport: str = "tcp"
    imei: str | None = None
    packet_id: int | None = None
    avl_packet_id: int | None = None
    packet_type: int | None = None


@dataclass(frozen=True, slots=True)
class GprsMessage:
    """One Codec 12/13/14/15 command or response.

    `payload` is the message body without the IMEI/timestamp prefix. `timestamp` is
    seconds for Codec 13/15 (milliseconds when a lenient Codec 13 decode met the
    8-byte variant; see `timestamp_width`).
    """

    type: int
    payload: bytes
    imei: str | None = None
    timestamp: int | None = None
    timestamp_width: int = 4

    @property
    def text(self) -> str | None:
        try:
            s = self.payload.decode("ascii")
        except UnicodeDecodeError:
            return None
        return s if all(c.isprintable() or c in "\r\n\t" for c in s) else None


@dataclass(frozen=True, slots=True)
class GprsPacket:
    codec: int
    messages: tuple[GprsMessage, ...]
    transport: str = "tcp"


@dataclass(frozen=True, slots=True)
class ImeiLogin:
    """The TCP login frame: 00 0F + 15 ASCII digits. The server answers one byte."""

    imei: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """The lone 0xFF byte a device sends on an idle TCP link. Never answered."""


@dataclass(frozen=True, slots=True)
class TcpAck:
    """The server's 4-byte big-endian count of accepted records."""

    count: int


@dataclass(frozen=True, slots=True)
class UdpAck:
    """The server's UDP answer: 00 05 <packet id> 01 <avl packet id> <count>."""

    packet_id: int
    avl_packet_id: int
    count: int


Packet = AvlPacket | GprsPacket | ImeiLogin | KeepAlive

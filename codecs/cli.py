"""`fleetcloak decode`: Teltonika packets as hex text in, one JSON object per packet out.

    fleetcloak decode [--transport tcp|udp] [--lenient] [--no-crc] [--hex HEX ... | FILE | -]

One packet per line (blank lines skipped, surrounding whitespace ignored); output lines
keep the input order. Shapes (docs/codecs.md):

  AVL       {"codec", "imei", "records": [{"timestamp_ms", "priority", "lat", "lon",
             "altitude", "angle", "satellites", "speed", "event_io_id",
             "generation_type", "io": {"<id>": int | "<hex>"}}]}
  GPRS      {"kind": "gprs", "codec", "messages": [{"type", "imei", "timestamp_s",
             "text", "payload_hex"}]}   (+ "timestamp_ms" for the lenient Codec 13 variant)
  login     {"kind": "login", "imei"}
  keep-alive {"kind": "keepalive"}
  error     {"error": "<reason>: <detail>", "offset": n}   -> exit status 2
  (an unreadable FILE is not a packet error: a message on stderr, exit status 1)

Imports stay light (no numpy, no Faust): this is a tool people pipe into.
"""
from __future__ import annotations

import json
import sys

from .errors import DecodeError
from .packets import AvlPacket, GprsPacket, ImeiLogin, KeepAlive
from .teltonika import decode


def add_arguments(parser) -> None:
    parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp",
                        help="tcp frames (login, keep-alive, AVL, GPRS) or udp datagrams")
    parser.add_argument("--lenient", action="store_true",
                        help="accept known device quirks (see docs/codecs.md)")
    parser.add_argument("--no-crc", dest="check_crc", action="store_false",
                        help="do not check the TCP CRC")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--hex", nargs="+", metavar="HEX", help="packets as hex arguments")
    src.add_argument("file", nargs="?", metavar="FILE",
                     help="file of hex packets, one per line; '-' or nothing: stdin")


def packet_json(p) -> dict:
    """The JSON-ready dict of one decoded packet (the `fleetcloak decode` contract)."""
    if isinstance(p, AvlPacket):
        return {"codec": p.codec, "imei": p.imei, "records": [
            {"timestamp_ms": r.timestamp_ms, "priority": r.priority, "lat": r.lat, "lon": r.lon,
             "altitude": r.altitude, "angle": r.angle, "satellites": r.satellites,
             "speed": r.speed, "event_io_id": r.event_io_id,
             "generation_type": r.generation_type,
             "io": {str(k): (v.hex() if isinstance(v, bytes) else v) for k, v in r.io.items()}}
            for r in p.records]}
    if isinstance(p, GprsPacket):
        msgs = []
        for m in p.messages:
            d = {"type": m.type, "imei": m.imei,
                 "timestamp_s": m.timestamp if m.timestamp_width == 4 else None,
                 "text": m.text, "payload_hex": m.payload.hex()}
            if m.timestamp_width == 8:
                d["timestamp_ms"] = m.timestamp
            msgs.append(d)
        return {"kind": "gprs", "codec": p.codec, "messages": msgs}
    if isinstance(p, ImeiLogin):
        return {"kind": "login", "imei": p.imei}
    if isinstance(p, KeepAlive):
        return {"kind": "keepalive"}
    raise TypeError(f"not a packet: {type(p).__name__}")


def decode_line(line: str, transport: str = "tcp", lenient: bool = False,
                check_crc: bool = True) -> dict:
    try:
        frame = bytes.fromhex(line)
    except ValueError as e:
        # "... at position N": the character offset in the (stripped) line
        msg = str(e)
        pos = msg.rsplit(" ", 1)[-1]
        return {"error": f"bad_hex: {msg}", "offset": int(pos) if pos.isdigit() else len(line)}
    try:
        return packet_json(decode(frame, transport, lenient=lenient, check_crc=check_crc))
    except DecodeError as e:
        return {"error": str(e), "offset": e.offset}


def _lines(args):
    if args.hex:
        yield from args.hex
    elif args.file and args.file != "-":
        with open(args.file, "rb") as f:  # bytes: a stray non-UTF-8 byte is bad hex, not a crash
            for raw in f:
                yield raw.decode("ascii", "replace")
    else:
        for raw in sys.stdin.buffer:
            yield raw.decode("ascii", "replace")


def run(args) -> int:
    if args.file and args.file != "-" and not args.hex:
        try:
            open(args.file, "rb").close()
        except OSError as e:  # not a packet error: no JSON line, exit status 1
            print(f"fleetcloak decode: cannot read {args.file}: {e.strerror}", file=sys.stderr)
            return 1
    failed = False
    out = sys.stdout
    dumps = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": ")).encode
    for line in _lines(args):
        line = line.strip()
        if not line:
            continue
        d = decode_line(line, args.transport, args.lenient, args.check_crc)
        failed = failed or "error" in d
        out.write(dumps(d) + "\n")
    out.flush()
    return 2 if failed else 0

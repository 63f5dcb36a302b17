"""The TCP stream framer: bytes in any chunking -> whole frames, sans-IO (h11 style).

What starts a frame (traccar's rule, protocol notes 2.1 and 2.4):

  FF                  keep-alive: a frame of 1 byte (also right before a login, FF 00 0F..)
  b0 b1 != 00 00      IMEI login: (b0 << 8 | b1) + 2 bytes
  00 00 00 00 L(u32)  data frame: L + 12 bytes; the codec id is byte 8

Declared lengths are checked against the caps BEFORE anything is buffered for them: a
login longer than `max_login`, or a data frame longer than the largest cap, fails as
soon as its length field is complete; once the codec byte arrives the frame must also
fit its codec's cap (`max_gprs_frame` for Codec 12-15, `max_avl_frame` otherwise, so an
unknown codec gets the small cap). Frames are not validated beyond their length: that
is decode()'s job, and a bad frame does not desynchronise the stream.

A length the framer cannot trust (too_large, bad_preamble) leaves the stream
unrecoverable, since nothing marks where the next frame starts: the DecodeError is
reported once, in order after every frame before it, and the framer stays failed
(`failed` is True, `error` holds it, feed() drops its input and returns [], next_frame()
returns the same error again). Close the connection. Error offsets count bytes from
the start of the stream.
"""
from __future__ import annotations

from .errors import DecodeError
from .packets import GPRS_CODECS

NEED_DATA = type("NeedData", (), {"__repr__": lambda self: "NEED_DATA", "__slots__": ()})()
KEEPALIVE_FRAME = b"\xff"

DEFAULT_MAX_AVL_FRAME = 1280    # whole AVL frame (protocol notes 7; nom-teltonika's default)
DEFAULT_MAX_GPRS_FRAME = 65536  # whole Codec 12-15 frame
DEFAULT_MAX_LOGIN = 64          # a real login is 17 bytes
_COMPACT_AT = 65536             # drop consumed bytes from the buffer past this


class TcpFramer:
    """Split one TCP connection's byte stream into frames.

    Either `feed(data) -> list[bytes | DecodeError]`, or `receive_data(data)` then call
    `next_frame()` until it returns NEED_DATA. `end_of_stream()` tells whether the
    connection closed inside a frame.
    """

    __slots__ = ("max_avl_frame", "max_gprs_frame", "max_login", "_buf", "_pos", "_base",
                 "_error", "_gprs")

    def __init__(self, *, max_avl_frame: int = DEFAULT_MAX_AVL_FRAME,
                 max_gprs_frame: int = DEFAULT_MAX_GPRS_FRAME,
                 max_login: int = DEFAULT_MAX_LOGIN) -> None:
        for name, v, lo in (("max_avl_frame", max_avl_frame, 12),
                            ("max_gprs_frame", max_gprs_frame, 12), ("max_login", max_login, 3)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.max_avl_frame = max_avl_frame
        self.max_gprs_frame = max_gprs_frame
        self.max_login = max_login
        self._buf = bytearray()
        self._pos = 0     # start of the next frame in _buf
        self._base = 0    # stream offset of _buf[0]
        self._error: DecodeError | None = None
        self._gprs = GPRS_CODECS

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> DecodeError | None:
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        if self._error is None and data:
            self._buf += data

    def feed(self, data: bytes) -> list:
        """Add bytes; return every frame now complete, and a DecodeError last if any."""
        if self._error is not None:
            return []
        self._buf += data
        out = []
        while True:
            f = self._next()
            if f is NEED_DATA:
                return out
            out.append(f)
            if type(f) is DecodeError:
                return out

    def next_frame(self):
        """The next whole frame (bytes), NEED_DATA, or the DecodeError that failed the stream."""
        if self._error is not None:
            return self._error
        return self._next()

    def end_of_stream(self) -> DecodeError | None:
        """Call when the connection closes: a DecodeError if it closed inside a frame."""
        if self._error is not None or self._pos == len(self._buf):
            return None
        return DecodeError("truncated", len(self._buf) + self._base,
                           f"connection closed with {self.buffered} bytes of an unfinished frame")

    def _fail(self, reason: str, at: int, detail: str) -> DecodeError:
        self._error = e = DecodeError(reason, self._base + at, detail)
        self._buf = bytearray()
        self._pos = 0
        return e

    def _next(self):
        buf = self._buf
        p = self._pos
        avail = len(buf) - p
        if not avail:
            return NEED_DATA
        b0 = buf[p]
        if b0 == 0xFF:
            total = 1
        elif avail < 2:
            return NEED_DATA
        elif b0 or buf[p + 1]:
            total = (b0 << 8 | buf[p + 1]) + 2
            if total > self.max_login:
                return self._fail("too_large", p, f"login declares {total} bytes, cap {self.max_login}")
        else:
            if avail < 4:
                return NEED_DATA
            if buf[p + 2] or buf[p + 3]:
                return self._fail("bad_preamble", p, f"data frame preamble {bytes(buf[p:p + 4]).hex()}")
            if avail < 8:
                return NEED_DATA
            total = int.from_bytes(buf[p + 4:p + 8], "big") + 12
            cap = max(self.max_avl_frame, self.max_gprs_frame)
            if total <= cap and avail >= 9:
                gprs = buf[p + 8] in self._gprs
                cap = self.max_gprs_frame if gprs else self.max_avl_frame
            if total > cap:
                return self._fail("too_large", p + 4, f"data frame declares {total} bytes, cap {cap}")
        if avail < total:
            return NEED_DATA
        end = p + total
        frame = bytes(buf[p:end])
        if end == len(buf):
            self._base += end
            buf.clear()
            self._pos = 0
        elif end > _COMPACT_AT:
            del buf[:end]
            self._base += end
            self._pos = 0
        else:
            self._pos = end
        return frame

"""CRC-16/IBM (catalogued as CRC-16/ARC) over a Teltonika data field.

poly 0x8005 reflected (0xA001), init 0, refin/refout, xorout 0; check("123456789") =
0xBB3D. Covers Codec ID .. Number of Data 2 (or Quantity 2) inclusive; the frame's CRC
field is 4 bytes, the upper 2 zero (protocol notes 2.3). anycrc runs it in C: a
pure-Python loop alone would cap the decoder near 200,000 records/s.
"""
from __future__ import annotations

import anycrc

# calc(bytes | bytearray | memoryview) -> int
crc16 = anycrc.Model("CRC16-ARC").calc

assert crc16(b"123456789") == 0xBB3D, "anycrc CRC16-ARC model is not CRC-16/IBM"


def crc16_py(data: bytes) -> int:
    """The reference bit loop (tests compare the C one against it)."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc

"""file:PATH — one JSON object per line per message, exactly what goes to the raw topic:

  {"imei": "356307042441013", "transport": "tcp", "frame_hex": "0000...", "received_at": 1763...}

received_at is ms since the epoch (the Kafka header carries the same number as ASCII).
Fault labels and fates are NOT written: they are the truth's, and a pipeline reading
this file must not be able to cheat. `-` writes to stdout.
"""
from __future__ import annotations

import sys

from ..packetiser import Emission


class FileSink:
    def __init__(self, path: str):
        self._own = path not in ("-", "")
        self._f = open(path, "w", encoding="ascii", buffering=1 << 20) if self._own else sys.stdout
        self._write = self._f.write

    def send(self, em: Emission):
        self._write(f'{{"imei":"{em.imei}","transport":"{em.transport}","frame_hex":"{em.frame.hex()}",'
                    f'"received_at":{em.received_at}}}\n')
        return ((em, em.fates),)

    def close(self):
        self._f.flush()
        if self._own:
            self._f.close()
        return ()

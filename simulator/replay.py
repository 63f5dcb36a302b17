"""`--replay PATH`: send a stream written by a file sink again, to any sink, fast.

For load tests: generate once (`--sink file:raw.jsonl --truth truth.json`), then replay
the file into Kafka or a gateway as often as needed; replaying costs a JSON parse and a
hex decode per message, no model and no encoding. The messages are sent exactly as
written (same order, same bytes, same received_at), so the truth of the run that wrote
the file still holds for file and Kafka sinks. Device sinks need each packet's record
count for the ACK check and read it from the frame header (Number of Data 1; TCP
offset 9, UDP offset 24, and the AVL packet id at UDP offset 5), so corrupt copies
replay too; their fates are not known here (the replay writes no truth).
"""
from __future__ import annotations

from collections.abc import Iterator

from .packetiser import Emission


def replay(path: str) -> Iterator[Emission]:
    import orjson

    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            m = orjson.loads(line)
            frame = bytes.fromhex(m["frame_hex"])
            transport = m["transport"]
            pos = 9 if transport == "tcp" else 24
            n = frame[pos] if len(frame) > pos else 0
            apid = frame[5] if transport == "udp" and len(frame) > 5 else None
            yield Emission(int(m["received_at"]), (i,), m["imei"], transport, frame, None, {},
                           None, "replay", -1, n, apid)

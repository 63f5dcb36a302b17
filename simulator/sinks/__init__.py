"""Where emissions go: `--sink URL`.

  file:PATH            JSON lines, one per message (file.py)
  kafka://HOST:PORT    the raw topic telematics.raw (kafka.py; aiokafka, imported lazily)
  tcp://HOST:PORT      behave as devices over TCP: login, ACK, retransmission (device.py)
  udp://HOST:PORT      behave as devices over UDP: AVL packet id, ACK, retransmission

A sink's `send(em)` returns the deliveries it has confirmed so far as (emission, fates)
pairs, and `close()` the rest: the truth counts only what a sink confirmed, so a run
stopped half-way still has a truth that matches the stream.
"""
from __future__ import annotations

from typing import Protocol

from ..packetiser import Emission

Delivered = list[tuple[Emission, dict[str, int]]]


class Sink(Protocol):
    def send(self, em: Emission) -> Delivered: ...
    def close(self) -> Delivered: ...


def open_sink(url: str, **options) -> Sink:
    if url.startswith("file:"):
        from .file import FileSink
        return FileSink(url[5:])
    if url.startswith("kafka://"):
        from .kafka import KafkaSink
        return KafkaSink(url[8:], **{k: v for k, v in options.items() if k in ("topic",)})
    if url.startswith(("tcp://", "udp://")):
        from .device import DeviceSink
        hostport = url[6:]
        host, _, port = hostport.rpartition(":")
        return DeviceSink(url[:3], host or "127.0.0.1", int(port),
                          **{k: v for k, v in options.items() if k in ("timeout", "attempts")})
    raise ValueError(f"unknown sink {url!r}: use file:PATH, kafka://HOST:PORT, tcp://HOST:PORT or udp://HOST:PORT")

"""Produce requests joined once: byte for byte what aiokafka's own encoder writes."""
from __future__ import annotations

import random

from aiokafka.protocol import produce
from aiokafka.protocol.api import RequestStruct
from aiokafka.protocol.struct import Struct

from fleetcloak.streams import produce_encoding
from fleetcloak.streams.produce_encoding import flat_encode, use_flat_produce_encoding


def _request(cls, rng: random.Random):
    topics = []
    for t in range(rng.randint(0, 4)):
        parts = []
        for p in rng.sample(range(64), rng.randint(0, 5)):
            size = rng.choice([0, 1, 61, 4096, 1 << 16])
            value = rng.choice([bytes, bytearray])(rng.randbytes(size)) if rng.random() > 0.1 else None
            parts.append((p, value))
        topics.append((f"tenant.t{t}-é.telemetry", parts))
    fields = {"transactional_id": rng.choice([None, "tx-1"]), "required_acks": rng.choice([-1, 0, 1]),
              "timeout": rng.randint(0, 2**31 - 1), "topics": topics}
    return cls(**{name: fields[name] for name in cls.SCHEMA.names})


def test_every_produce_version_encodes_as_aiokafka_does():
    rng = random.Random(5)
    versions = produce_encoding._produce_structs()
    assert len(versions) >= 8
    for cls in versions:
        for _ in range(30):
            request = _request(cls, rng)
            assert flat_encode(request) == Struct.encode(request), cls.__name__


def test_installed_where_it_matches_and_the_requests_still_decode():
    assert use_flat_produce_encoding() >= 8
    assert use_flat_produce_encoding() >= 8  # idempotent
    request = _request(produce.ProduceRequest_v7, random.Random(1))
    assert produce.ProduceRequest_v7.encode is flat_encode
    assert produce.ProduceRequest_v7.decode(request.encode()).topics == [
        (t, [(p, bytes(v) if v is not None else None) for p, v in parts]) for t, parts in request.topics]


def test_a_struct_it_would_encode_differently_keeps_its_own_encoder(monkeypatch, caplog):
    class Odd(RequestStruct):
        API_KEY = 0
        API_VERSION = 99
        RESPONSE_TYPE = produce.ProduceResponse_v7
        SCHEMA = produce.ProduceRequest_v7.SCHEMA

        def encode(self):  # a future aiokafka writing something else
            return b"\x00" + Struct.encode(self)

    monkeypatch.setattr(produce_encoding, "_produce_structs", lambda: [Odd])
    use_flat_produce_encoding()
    assert Odd.encode is not flat_encode
    assert "Odd keeps aiokafka's encoder" in caplog.text

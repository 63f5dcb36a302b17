"""Session-wide fixtures. The broker is real: one Tansu process per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS_PATH = REPO / "tests" / "vectors" / "teltonika_public.json"  # copied from shared/vectors


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """Bootstrap address (host:port) of an embedded Tansu broker for this session."""
    from fleetcloak.streams.broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b.bootstrap


@pytest.fixture
def new_topic(broker):
    """Factory: new_topic(prefix, partitions=1, configs=None) -> a fresh topic's name.

    Tests share one broker; unique names keep them apart without restarting it.
    """
    from fleetcloak.streams.topicio import create_topic, unique_name

    def make(prefix: str = "test", partitions: int = 1, configs: dict | None = None) -> str:
        name = unique_name(prefix)
        create_topic(broker, name, partitions, configs)
        return name

    return make


@pytest.fixture
def topic_io(broker):
    """Synchronous topic IO bound to the session broker: .produce, .read_all, .committed,
    .true_end_offsets (see fleetcloak.streams.topicio)."""
    import functools
    import types

    from fleetcloak.streams import topicio

    return types.SimpleNamespace(**{name: functools.partial(getattr(topicio, name), broker) for name in
                                    ("produce", "read_all", "committed", "true_end_offsets", "create_topic")})

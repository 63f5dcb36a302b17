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

"""Fixtures for the anonymize tests: an in-memory keyring and the example policies.

(pytest runs with --import-mode=importlib, so tests take helpers as fixtures rather
than importing this file.)
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.keystore import MasterKey, MemoryKeyStore
from fleetcloak.anonymize.policy import luhn_check_digit

REPO = Path(__file__).resolve().parents[2]


def _make_imei(body14: int) -> str:
    b = f"{body14:014d}"
    return b + str(luhn_check_digit(b))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def make_imei():
    return _make_imei


@pytest.fixture(scope="session")
def t0() -> int:
    return 1_795_000_000_000  # 2026-11-18 UTC


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate(ephemeral=False)


@pytest.fixture
def keyring(master) -> Keyring:
    return Keyring(MemoryKeyStore(), master)


@pytest.fixture(scope="session")
def policies():
    from fleetcloak.anonymize.policy import PolicySet

    return PolicySet.from_files(sorted((REPO / "examples" / "policies").glob("*.yaml")))

"""`fleetcloak policy validate` and `fleetcloak pseudonym`, run as a user runs them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetcloak.anonymize.keys import Keyring
from fleetcloak.anonymize.keystore import FileKeyStore, MasterKey
from fleetcloak.anonymize.pseudonyms import Pseudonymizer

BIN = Path(sys.executable).parent / "fleetcloak"


def _run(*args, env=None, cwd=None):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_policy_validate_ok(repo):
    files = sorted((repo / "examples" / "policies").glob("*.yaml"))
    r = _run("policy", "validate", *files)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(files) and all(": OK (" in line for line in lines)


def test_policy_validate_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tenant: acme\nretention_days: 400\ncolour: red\n"
        "devices: ['356307042441014', '35630704244101']\n"
        "processor:\n  privacy_zones:\n    - name: bow\n      geometry: {type: Polygon, coordinates: [[[0,0],[1,1],[1,0],[0,1],[0,0]]]}\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text("tenant: other\ndevices: ['356307042441013']\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text("tenant: dup\ndevices: ['356307042441013']\n")
    r = _run("policy", "validate", bad, other, dup)
    assert r.returncode == 2
    err = r.stderr
    for expected in (
        f"{bad}: retention_days: retention of 400 days exceeds the 12-month cap",
        f"{bad}: colour: unknown field",
        f"{bad}: devices[0].imei: IMEI fails the Luhn check",
        f"{bad}: devices[1].imei: an IMEI has 15 digits, this one has 14",
        f"{bad}: processor.privacy_zones[0].geometry: invalid polygon: Self-intersection",
        f"{dup}: devices[0].imei: device 356307042441013 already belongs to tenant 'other'",
    ):
        assert expected in err, (expected, err)
    assert f"{other}: OK" in r.stdout


def test_pseudonym_cli_matches_the_library(tmp_path, t0):
    key = MasterKey.new_base64()
    env = dict(os.environ, FLEETCLOAK_MASTER_KEY=key)
    store = tmp_path / "keys.json"
    kr = Keyring(FileKeyStore(store), MasterKey.from_base64(key))
    p = Pseudonymizer(kr, tenant="acme", rotation="monthly")
    dev = p.imei("356307042441013", t0)
    drv = p.at("driver", bytes.fromhex("01000012345678ab"), t0)
    r = _run("pseudonym", "--tenant", "acme", "--imei", "356307042441013", "--at", "2026-11-18", "--keystore", store, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == dev
    kr.subjects_secret("acme")  # the tenant's static root exists too: still unambiguous
    r = _run("pseudonym", "--tenant", "acme", "--imei", "356307042441013", "--at", "2026-11-18", "--keystore", store, env=env)
    assert r.stdout.strip() == dev, r.stderr
    r = _run("pseudonym", "--tenant", "acme", "--driver", "01000012345678AB", "--at", "2026-11-30T23:00:00+00:00",
             "--keystore", store, "--rotation", "monthly", env=env)
    assert r.stdout.strip() == drv, r.stderr
    # another tenant sees something else -- but only once its key exists; the CLI never mints one
    r = _run("pseudonym", "--tenant", "other", "--imei", "356307042441013", "--at", "2026-11-18", "--keystore", store,
             "--rotation", "monthly", env=env)
    assert r.returncode == 1 and "no key epoch 2026m11" in r.stderr
    assert "root/other/2026m11" not in FileKeyStore(store).names()
    # a destroyed epoch says so
    kr.destroy_epoch("acme", "2026m11")
    r = _run("pseudonym", "--tenant", "acme", "--imei", "356307042441013", "--at", "2026-11-18", "--keystore", store,
             "--rotation", "monthly", env=env)
    assert r.returncode == 1 and "destroyed" in r.stderr and key not in r.stderr


def test_pseudonym_cli_refuses_without_master_key_and_bad_input(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCLOAK_MASTER_KEY")}
    r = _run("pseudonym", "--tenant", "acme", "--imei", "356307042441013", "--keystore", tmp_path / "k.json", env=env)
    assert r.returncode == 1 and "no master key" in r.stderr
    r = _run("pseudonym", "--tenant", "acme", "--imei", "356307042441014", env=env)
    assert r.returncode == 2 and "Luhn" in r.stderr
    r = _run("pseudonym", "--tenant", "acme", "--driver", "0000000000000000", env=env)
    assert r.returncode == 2 and "zero iButton" in r.stderr


@pytest.mark.parametrize("args", [["policy"], ["pseudonym", "--tenant", "a"]])
def test_usage_errors_exit_2(args):
    assert _run(*args).returncode == 2

"""Policy validation: every mistake named by its field path, and the examples are valid."""
from __future__ import annotations

import json

import pytest

from fleetcloak.anonymize.policy import (
    PolicyError,
    PolicySet,
    TenantPolicy,
    dump_policy,
    load_policy,
    load_policy_file,
    validate_imei,
)
from fleetcloak.anonymize.service_policy import ServicePolicy

GOOD = "356307042441013"


def _errors(data: dict) -> list[str]:
    with pytest.raises(PolicyError) as ei:
        load_policy(data, "t.yaml")
    return ei.value.messages


def _one(data: dict, path: str, *words: str) -> None:
    msgs = _errors(data)
    hit = [m for m in msgs if m.startswith(path + ":")]
    assert hit, msgs
    for w in words:
        assert any(w in m for m in hit), (w, hit)


def test_examples_are_valid(policies):
    assert set(policies.tenants) == {"acme-logistics", "nordic-taxi", "heavy-haul"}
    assert policies.service is not None
    assert policies.tenant_of("860759047001243") == "nordic-taxi"
    assert policies.family_of("352093085130101") == "64x"
    assert policies.tenants["heavy-haul"].analytics is False


def test_unknown_fields_anywhere():
    _one({"tenant": "a", "colour": 1}, "colour", "unknown field")
    _one({"tenant": "a", "processor": {"locaton": {}}}, "processor.locaton", "unknown field")
    _one({"tenant": "a", "devices": [{"imei": GOOD, "modle": "FMB130"}]}, "devices[0].modle", "unknown field")
    _one({"service": "s", "alow": []}, "alow", "unknown field")


@pytest.mark.parametrize("imei, words", [
    ("35630704244101", ["15 digits", "has 14"]),
    ("3563070424410133", ["has 16"]),
    ("35630704244101x", ["only digits"]),
    ("356307042441014", ["Luhn", "check digit", "is 3"]),
])
def test_bad_imeis(imei, words):
    _one({"tenant": "a", "devices": [GOOD if imei != GOOD else None, imei][1:]}, "devices[0].imei", *words)
    with pytest.raises(ValueError):
        validate_imei(imei)


def test_retention_cap():
    _one({"tenant": "a", "retention_days": 400}, "retention_days", "400 days exceeds the 12-month cap")
    _one({"tenant": "a", "retention_days": 0}, "retention_days", "greater than or equal to 1")
    _one({"service": "s", "retention_days": 366}, "retention_days", "cap")
    assert TenantPolicy(tenant="a", retention_days=365).retention_days == 365


def test_polygons():
    bow = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    _one({"tenant": "a", "processor": {"privacy_zones": [{"name": "z", "geometry": bow}]}},
         "processor.privacy_zones[0].geometry", "Self-intersection")
    open_ring = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}
    _one({"tenant": "a", "processor": {"privacy_zones": [{"name": "z", "geometry": open_ring}]}},
         "processor.privacy_zones[0].geometry", "closed")
    swapped = {"type": "Polygon", "coordinates": [[[52, 100], [53, 100], [53, 101], [52, 100]]]}
    _one({"tenant": "a", "processor": {"privacy_zones": [{"name": "z", "geometry": swapped}]}},
         "processor.privacy_zones[0].geometry", "[lon, lat]")
    _one({"tenant": "a", "processor": {"privacy_zones": [{"name": "z", "geometry": {"type": "Point", "coordinates": [0, 0]}}]}},
         "processor.privacy_zones[0].geometry", "Polygon or MultiPolygon")
    overlapping = {"type": "MultiPolygon", "coordinates": [
        [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]], [[[1, 1], [3, 1], [3, 3], [1, 3], [1, 1]]]]}
    _one({"tenant": "a", "processor": {"privacy_zones": [{"name": "z", "geometry": overlapping}]}},
         "processor.privacy_zones[0].geometry", "invalid polygon")
    ok = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}
    assert load_policy({"tenant": "a", "processor": {"privacy_zones": [{"name": "z", "geometry": ok}]}}).processor.privacy_zones[0].geometry["type"] == "Polygon"


def test_other_mistakes():
    _one({"tenant": "Acme_Logistics"}, "tenant", "not a tenant id")
    _one({"tenant": "service"}, "tenant", "reserved")
    _one({}, "tenant", "required field is missing")
    _one({"tenant": "a", "timezone": "Mars/Olympus"}, "timezone", "unknown time zone")
    _one({"tenant": "a", "pseudonym_rotation": "hourly"}, "pseudonym_rotation", "'monthly'", "hourly")
    _one({"tenant": "a", "processor": {"location": {"precision": "grid"}}}, "processor.location", "needs grid_m")
    _one({"tenant": "a", "processor": {"io": {"allow": [1], "deny": [2]}}}, "processor.io", "either allow or deny")
    _one({"tenant": "a", "processor": {"pseudonymise": ["device", "passport"]}}, "processor.pseudonymise[1]", "passport")
    _one({"tenant": "a", "processor": {"private_mode": {"hours": [{"start": "25:00", "end": "06:00"}]}}},
         "processor.private_mode.hours[0].start", "time")
    _one({"tenant": "a", "devices": [GOOD, GOOD]}, "devices", "listed twice")
    _one({"tenant": "a", "devices": [{"imei": GOOD, "model": "FMB640", "family": "FMB"}]}, "devices[0]", "contradicts")
    _one({"service": "s", "location": {"h3_resolution": 8, "grid_m": 500}}, "location", "not both")
    _one({"service": "s", "time_bucket_s": 700}, "time_bucket_s", "divide a day")
    _one({"service": "s", "allow": ["imei"]}, "allow[0]", "imei")


def test_all_mistakes_reported_at_once():
    msgs = _errors({"tenant": "A", "retention_days": 400, "devices": ["1"], "x": 1})
    assert {m.split(":")[0] for m in msgs} == {"tenant", "retention_days", "devices[0].imei", "x"}


def test_device_owned_by_two_tenants(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.json"
    a.write_text(f"tenant: a\ndevices: ['{GOOD}']\n")
    b.write_text(json.dumps({"tenant": "b", "devices": [{"imei": GOOD}]}))
    with pytest.raises(PolicyError) as ei:
        PolicySet.from_files([a, b])
    (msg,) = ei.value.messages
    assert msg.startswith(f"{b}: devices[0].imei: device {GOOD} already belongs to tenant 'a'")
    c = tmp_path / "c.yaml"
    c.write_text("tenant: a\n")
    with pytest.raises(PolicyError, match="already defined"):
        PolicySet.from_files([a, c])


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy_file(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_policy_file(lst)


def test_models_are_frozen_and_round_trip(policies):
    pol = policies.tenants["acme-logistics"]
    with pytest.raises(Exception):
        pol.tenant = "x"
    assert load_policy(dump_policy(pol)) == pol
    svc = policies.service
    assert isinstance(load_policy(dump_policy(svc)), ServicePolicy)


def test_yaml_number_traps(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("tenant: a\ndevices: [0356307042441013]\nprocessor:\n  private_mode:\n    hours: [{start: 22:00, end: 06:00}]\n")
    with pytest.raises(PolicyError) as ei:
        load_policy_file(f)
    text = "\n".join(ei.value.messages)
    assert "devices[0].imei" in text and "quote IMEIs in YAML" in text
    assert 'processor.private_mode.hours[0].start: write times in quotes, e.g. "22:00"' in text


def test_registry_is_vectorised(policies):
    tenants, families = policies.registry(["352093085130101", "356307042441013", "111111111111116", "352093085130101"])
    assert tenants.tolist() == ["heavy-haul", "acme-logistics", None, "heavy-haul"]
    assert families.tolist() == ["64x", "FMB", "FMB", "64x"]

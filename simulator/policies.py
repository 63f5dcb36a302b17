"""`--write-policies DIR`: one tenant policy per simulated tenant, plus a service policy,
in the anonymize subpackage's format (fleetcloak.anonymize.policy; docs/policies.md).

Every file is built as the pydantic model and validated before it is written, so what
lands in DIR is exactly what `fleetcloak policy validate` accepts. Tenants differ on
purpose (tenant index modulo 3):
  0  keeps precise positions for its own use: location exact, the IMEI kept (device not
     pseudonymised), drivers/SIMs/users/vehicles pseudonymised, retention 365 days
  1  pseudonymises every identifier kind and coarsens positions to a 500 m grid,
     weekly pseudonym rotation, retention 180 days
  2  refuses the analytics route (analytics: false), every kind pseudonymised, exact
     positions, retention 90 days
All of them: privacy zones of 300 m squares around each driver's home ("home-NN", the
truth maps names to drivers) and a 400 m square around the depot ("depot"), and the
drivers' private-mode switch (IO 391) honoured.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .fleet import Fleet
from .truth import Truth

PROFILES = (
    {"retention_days": 365, "pseudonym_rotation": "monthly", "analytics": True,
     "processor": {"pseudonymise": ["driver", "sim", "user", "vehicle"],
                   "location": {"precision": "exact"}}},
    {"retention_days": 180, "pseudonym_rotation": "weekly", "analytics": True,
     "processor": {"location": {"precision": "grid", "grid_m": 500}}},
    {"retention_days": 90, "pseudonym_rotation": "monthly", "analytics": False,
     "processor": {"location": {"precision": "exact"}}},
)

SERVICE = {"service": "fleetcloak-analytics", "location": {"h3_resolution": 8},
           "time_bucket_s": 900, "speed_bucket_kmh": 10,
           "allow": ["driver", "speed", "ignition", "movement"], "min_group_size": 5,
           "pseudonym_rotation": "monthly", "retention_days": 365}


def tenant_policies(fleet: Fleet, truth: Truth) -> dict[str, dict]:
    zones = truth.zones()
    out = {}
    for t in fleet.tenants:
        prof = PROFILES[t.index % len(PROFILES)]
        processor = dict(prof["processor"])
        processor["privacy_zones"] = [
            {"name": z["name"], "geometry": {"type": "Polygon", "coordinates": [z["polygon"]]}}
            for z in zones[t.id]
        ]
        processor["private_mode"] = {"honour_device_flag": True}
        out[t.id] = {
            "tenant": t.id,
            "timezone": t.timezone,
            "retention_days": prof["retention_days"],
            "pseudonym_rotation": prof["pseudonym_rotation"],
            "analytics": prof["analytics"],
            "devices": [{"imei": fleet.vehicles[vi].imei, "model": fleet.vehicles[vi].model}
                        for vi in t.vehicles],
            "processor": processor,
        }
    return out


def write_policies(fleet: Fleet, truth: Truth, directory: str | Path) -> list[Path]:
    """Validate with the anonymize models, then write DIR/<tenant>.yaml and DIR/service.yaml."""
    from ..anonymize.policy import PolicySet, load_policy

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    docs = {**tenant_policies(fleet, truth), "service": SERVICE}
    PolicySet([load_policy(doc, f"{name}.yaml") for name, doc in docs.items()],
              [f"{name}.yaml" for name in docs])
    paths = []
    for name, doc in docs.items():
        p = d / f"{name}.yaml"
        head = ("# Written by `fleetcloak simulate --write-policies` for a simulated tenant.\n"
                if name != "service" else "# Written by `fleetcloak simulate`: the service policy.\n")
        p.write_text(head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
        paths.append(p)
    return paths

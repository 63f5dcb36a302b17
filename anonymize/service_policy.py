"""The service policy: what the controller route (the service's own analytics) keeps.

Everything here is stronger than any tenant setting: pseudonyms come from the service's
keys with per-subject secrets (keys.py), positions become cell centres (H3 or a metric
grid), time is bucketed, and only allowlisted fields pass. See docs/policies.md.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .policy import MAX_RETENTION_DAYS, Rotation, _Model

# Fields a service policy may allow. Identifier fields (device, driver) are always the
# controller-route pseudonyms; raw identifiers are never allowed here.
ServiceField = Literal["driver", "speed", "heading", "altitude", "satellites", "ignition", "movement", "odometer", "fuel_level", "external_voltage", "event_io_id"]

# Non-identifying IO elements (FMB numbering) that analytics may keep, by field name.
SERVICE_IO_FIELDS: dict[str, int] = {
    "ignition": 239,
    "movement": 240,
    "odometer": 16,
    "fuel_level": 48,
    "external_voltage": 66,
}


class ServiceLocation(_Model):
    """Analytics positions: H3 cell centres (h3_resolution) or metric grid centres (grid_m)."""

    h3_resolution: Annotated[int, Field(ge=0, le=10)] | None = 8
    grid_m: Annotated[float, Field(ge=100, le=100_000)] | None = None

    @model_validator(mode="after")
    def _one(self) -> ServiceLocation:
        if self.grid_m is not None and "h3_resolution" in self.model_fields_set and self.h3_resolution is not None:
            raise ValueError("give either h3_resolution or grid_m, not both")
        if self.grid_m is not None:
            object.__setattr__(self, "h3_resolution", None)
        if self.h3_resolution is None and self.grid_m is None:
            raise ValueError("give h3_resolution (0..10) or grid_m (metres)")
        return self


class ServicePolicy(_Model):
    """The controller route's policy (one per deployment).

    min_group_size  k: a (cell, time bucket) is released only once at least k distinct
                    devices were seen in it (earlier records of that group keep their
                    record but lose the position); see docs/policies.md for what this
                    does and does not guarantee in a stream.
    """

    service: Annotated[str, Field(min_length=1, max_length=48)]  # its presence marks a service policy file
    location: ServiceLocation = ServiceLocation()
    time_bucket_s: Annotated[int, Field(ge=60, le=86_400)] = 900
    speed_bucket_kmh: Annotated[int, Field(ge=1, le=100)] = 10
    allow: tuple[ServiceField, ...] = ("driver", "speed")
    min_group_size: Annotated[int, Field(ge=1, le=1000)] = 5
    pseudonym_rotation: Rotation = "monthly"
    retention_days: Annotated[int, Field(ge=1)] = MAX_RETENTION_DAYS

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v > MAX_RETENTION_DAYS:
            raise ValueError(f"retention of {v} days exceeds the 12-month cap ({MAX_RETENTION_DAYS} days)")
        return v

    @field_validator("time_bucket_s")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 86_400 % v:
            raise ValueError(f"{v} s does not divide a day evenly (use e.g. 300, 900, 3600)")
        return v

    @field_validator("allow")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a field is listed twice")
        return v

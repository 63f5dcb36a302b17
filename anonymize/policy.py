"""Tenant policies (processor route): the validated, frozen model of a policy file.

A tenant policy file is YAML or JSON; docs/policies.md documents every field and
examples/policies/ holds examples. Validation is pydantic v2 with `extra="forbid"`, and
every error names the field path and what is wrong (`load_policy_file`,
`PolicyError.messages`). Cross-file rules (a device owned by two tenants, one tenant id
in two files) live in `PolicySet`.

A file holding a top-level `service:` key is a service policy (controller route,
service_policy.py); any other file is a tenant policy.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..codecs.iodict import FAMILIES, family_of_model

# Identifier kinds and their pseudonym prefixes. "device" is the IMEI; the others are
# the kinds of codecs.iodict.IdentifierGroup.
KIND_PREFIX: dict[str, str] = {
    "device": "dev",
    "driver": "drv",
    "sim": "sim",
    "vehicle": "veh",
    "user": "usr",
    "sensor": "sen",
    "beacon": "bcn",
    "can_module": "can",
}
IdentifierKind = Literal["device", "driver", "sim", "vehicle", "user", "sensor", "beacon", "can_module"]
ALL_KINDS: tuple[str, ...] = tuple(KIND_PREFIX)

Rotation = Literal["daily", "weekly", "monthly", "yearly", "never"]
MAX_RETENTION_DAYS = 365

# A tenant id becomes part of a topic name (tenant.<tenant>.telemetry) and of key
# names in the keystore: lowercase slug, no dots, no underscores at the ends.
TENANT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PolicyError(ValueError):
    """A policy file (or set of files) is invalid. `messages` are "path: problem" lines."""

    def __init__(self, messages: list[str], source: str | None = None):
        self.messages = messages
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + m for m in messages))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# --- IMEI -------------------------------------------------------------------------
def luhn_check_digit(body: str) -> int:
    """The Luhn check digit for a string of digits (the IMEI's first 14)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = ord(ch) - 48
        if i % 2 == 0:  # doubled positions, counted from the right of the body
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def validate_imei(value: Any) -> str:
    """15 ASCII digits with a valid Luhn check digit; returns the IMEI as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"an IMEI must be a string of 15 digits, got {type(value).__name__}")
    try:
        return _validate_imei_text(str(value).strip())
    except ValueError as exc:
        if isinstance(value, int):  # YAML turned an unquoted IMEI into a number
            raise ValueError(f"{exc} (quote IMEIs in YAML: unquoted, a leading 0 makes it an octal number)") from None
        raise


def _validate_imei_text(s: str) -> str:
    if not s.isascii() or not s.isdigit():
        bad = next((c for c in s if not ("0" <= c <= "9")), "")
        raise ValueError(f"an IMEI has only digits 0-9 (found {bad!r})")
    if len(s) != 15:
        raise ValueError(f"an IMEI has 15 digits, this one has {len(s)}")
    expected = luhn_check_digit(s[:14])
    if int(s[14]) != expected:
        raise ValueError(
            f"IMEI fails the Luhn check: its last digit is {s[14]}, the check digit of "
            f"the first 14 digits is {expected} (a typo?)"
        )
    return s


class Device(_Model):
    """One device of the tenant. `model` (e.g. FMB130) picks the IO dictionary family."""

    imei: str
    model: str | None = None
    family: Literal["FMB", "64x", "AT"] | None = None

    @field_validator("imei", mode="before")
    @classmethod
    def _imei(cls, v: Any) -> str:
        return validate_imei(v)

    @model_validator(mode="after")
    def _family(self) -> Device:
        if self.family is None:
            object.__setattr__(self, "family", family_of_model(self.model) if self.model else "FMB")
        elif self.model and family_of_model(self.model) != self.family:
            raise ValueError(
                f"family {self.family!r} contradicts model {self.model!r} "
                f"(which is family {family_of_model(self.model)!r}); give one or the other"
            )
        return self


# --- location ---------------------------------------------------------------------
class Location(_Model):
    """How precise positions stay on the processor route.

    exact  positions pass as they are (privacy zones and private mode still apply)
    grid   snapped to the centre of a grid cell of `grid_m` metres (coarsen.py)
    none   positions removed from every record
    """

    precision: Literal["exact", "grid", "none"] = "exact"
    grid_m: Annotated[float, Field(ge=10, le=100_000)] | None = None

    @model_validator(mode="after")
    def _grid(self) -> Location:
        if self.precision == "grid" and self.grid_m is None:
            raise ValueError("precision 'grid' needs grid_m (cell size in metres, e.g. 250)")
        if self.precision != "grid" and self.grid_m is not None:
            raise ValueError(f"grid_m is only used with precision 'grid' (precision is {self.precision!r})")
        return self


def _check_ring(ring: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(ring, list) or len(ring) < 4:
        raise ValueError(f"{where}: a linear ring needs at least 4 positions (first = last)")
    pts = []
    for k, p in enumerate(ring):
        if (
            not isinstance(p, (list, tuple))
            or len(p) < 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p[:2])
        ):
            raise ValueError(f"{where}[{k}]: a position is [lon, lat] in degrees, got {p!r}")
        lon, lat = float(p[0]), float(p[1])
        if not (-180 <= lon <= 180) or not (-90 <= lat <= 90):
            raise ValueError(
                f"{where}[{k}]: [{lon}, {lat}] is outside [-180..180, -90..90] "
                "(GeoJSON order is [lon, lat])"
            )
        pts.append((lon, lat))
    if pts[0] != pts[-1]:
        raise ValueError(f"{where}: a linear ring must be closed (last position equal to the first)")
    return pts


class PrivacyZone(_Model):
    """A polygon (GeoJSON Polygon or MultiPolygon geometry, or a Feature holding one).

    Inside it a record's position is removed, or replaced by `replace_with` ([lon, lat]),
    and the record carries `location_suppressed: "privacy_zone"`.
    """

    name: Annotated[str, Field(min_length=1, max_length=80)]
    geometry: dict[str, Any]
    replace_with: tuple[float, float] | None = None

    @field_validator("geometry", mode="before")
    @classmethod
    def _geometry(cls, v: Any) -> dict[str, Any]:
        if isinstance(v, Mapping) and v.get("type") == "Feature":
            v = v.get("geometry")
        if not isinstance(v, Mapping):
            raise ValueError("a GeoJSON geometry object is expected ({type: Polygon, coordinates: ...})")
        try:  # tuples (shapely.geometry.mapping) become lists, as in a file
            v = json.loads(json.dumps(dict(v)))
        except (TypeError, ValueError):
            raise ValueError("the geometry holds values that are not GeoJSON (numbers and lists)") from None
        typ = v.get("type")
        if typ not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"geometry type must be Polygon or MultiPolygon, got {typ!r}")
        extra = set(v) - {"type", "coordinates", "bbox"}
        if extra:
            raise ValueError(f"unknown geometry member(s): {', '.join(sorted(extra))}")
        coords = v.get("coordinates")
        polys = [coords] if typ == "Polygon" else coords
        if not isinstance(polys, list) or not polys:
            raise ValueError("coordinates are missing or empty")
        for i, poly in enumerate(polys):
            where = "coordinates" if typ == "Polygon" else f"coordinates[{i}]"
            if not isinstance(poly, list) or not poly:
                raise ValueError(f"{where}: a polygon is a list of rings (outer ring first)")
            for j, ring in enumerate(poly):
                _check_ring(ring, f"{where}[{j}]")
        import shapely
        from shapely.validation import explain_validity

        geom = shapely.geometry.shape(dict(v))
        if not geom.is_valid:
            raise ValueError(
                f"invalid polygon: {explain_validity(geom)} "
                "(self-intersecting rings, overlapping parts or holes outside the shell)"
            )
        if geom.is_empty or geom.area == 0:
            raise ValueError("the polygon has no area")
        return {"type": typ, "coordinates": coords}

    @field_validator("replace_with")
    @classmethod
    def _point(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and (not -180 <= v[0] <= 180 or not -90 <= v[1] <= 90):
            raise ValueError(f"{list(v)} is not a [lon, lat] position in degrees")
        return v

    @cached_property
    def shape(self):
        import shapely

        return shapely.geometry.shape(self.geometry)


# --- private hours and private mode -------------------------------------------------
class PrivateHours(_Model):
    """A weekly window in the tenant's time zone during which records are private.

    `start`/`end` are "HH:MM"; a window with end <= start runs past midnight into the
    next day (the window belongs to the day it starts on); start == end is 24 hours.
    """

    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = _DAYS
    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            h, m = divmod(v, 60)
            raise ValueError(
                f'write times in quotes, e.g. "{h:02d}:{m:02d}": unquoted, YAML reads '
                f"{h}:{m:02d} as the number {v}"
            )
        return v

    @field_validator("days")
    @classmethod
    def _days(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("days is empty: list at least one of mon..sun, or leave it out for every day")
        if len(set(v)) != len(v):
            raise ValueError("a day is listed twice")
        return v



StripField = Literal["position", "speed", "heading", "altitude", "cell_ids"]


class PrivateMode(_Model):
    """What private mode does on the processor route (the controller route drops the record).

    honour_device_flag  a record with IO 391 (Private Mode) != 0 is private
    hours               the tenant's private hours (local time, see `timezone`)
    strip               what is removed from private records on the processor route
    """

    honour_device_flag: bool = True
    hours: tuple[PrivateHours, ...] = ()
    strip: tuple[StripField, ...] = ("position", "speed", "heading", "cell_ids")


# --- IO filter ----------------------------------------------------------------------
IoId = Annotated[int, Field(ge=0, le=65535)]


class IoFilter(_Model):
    """Which IO elements pass on the processor route: an allowlist or a denylist.

    With neither, every IO element passes (identifiers pseudonymised per policy).
    """

    allow: tuple[IoId, ...] | None = None
    deny: tuple[IoId, ...] | None = None

    @model_validator(mode="after")
    def _one(self) -> IoFilter:
        if self.allow is not None and self.deny is not None:
            raise ValueError("give either allow or deny, not both")
        return self

    def passes(self, io_id: int) -> bool:
        if self.allow is not None:
            return io_id in self.allow
        if self.deny is not None:
            return io_id not in self.deny
        return True


class Processor(_Model):
    """Processor-route settings: what the tenant's own topic receives."""

    pseudonymise: tuple[IdentifierKind, ...] = ALL_KINDS
    location: Location = Location()
    privacy_zones: tuple[PrivacyZone, ...] = ()
    private_mode: PrivateMode = PrivateMode()
    io: IoFilter = IoFilter()
    output: Literal["per_record", "per_packet"] = "per_record"
    drop_fields: tuple[Literal["altitude", "heading", "speed", "satellites"], ...] = ()

    @field_validator("pseudonymise")
    @classmethod
    def _kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("an identifier kind is listed twice")
        return v

    @field_validator("privacy_zones")
    @classmethod
    def _zone_names(cls, v: tuple[PrivacyZone, ...]) -> tuple[PrivacyZone, ...]:
        names = [z.name for z in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"zone name(s) used twice: {', '.join(sorted(dup))}")
        return v


class TenantPolicy(_Model):
    """One tenant's policy file. See docs/policies.md."""

    tenant: str
    timezone: str = "UTC"
    retention_days: Annotated[int, Field(ge=1)] = MAX_RETENTION_DAYS
    pseudonym_rotation: Rotation = "monthly"
    analytics: bool = True
    devices: tuple[Device, ...] = ()
    processor: Processor = Processor()

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        if v == "service":
            raise ValueError("'service' is reserved for the service's own keys")
        if not TENANT_RE.match(v):
            raise ValueError(
                f"{v!r} is not a tenant id: use 1-48 characters a-z, 0-9 and '-', "
                "starting and ending with a letter or digit (it becomes part of a topic name)"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from None
        return v

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v > MAX_RETENTION_DAYS:
            raise ValueError(
                f"retention of {v} days exceeds the 12-month cap ({MAX_RETENTION_DAYS} days)"
            )
        return v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_short_form(cls, v: Any) -> Any:
        # "- 356307042441013" is accepted as "- imei: 356307042441013".
        if isinstance(v, list):
            return [{"imei": d} if isinstance(d, (str, int)) and not isinstance(d, bool) else d for d in v]
        return v

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: tuple[Device, ...]) -> tuple[Device, ...]:
        seen: dict[str, int] = {}
        for i, d in enumerate(v):
            if d.imei in seen:
                raise ValueError(f"IMEI {d.imei} is listed twice (devices[{seen[d.imei]}] and devices[{i}])")
            seen[d.imei] = i
        return v

    @cached_property
    def zoneinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def device_family(self) -> dict[str, str]:
        """IMEI -> IO dictionary family, for every device of the tenant."""
        return {d.imei: d.family or "FMB" for d in self.devices}


# --- loading ------------------------------------------------------------------------
def format_validation_error(err: ValidationError) -> list[str]:
    """pydantic errors as "field.path[2].sub: what is wrong" lines."""
    out = []
    for e in err.errors(include_url=False):
        path = ""
        for part in e["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in ("function-after[_family(), Device]",) or "function-" in str(part):
                continue
            else:
                path += ("." if path else "") + str(part)
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not part of the policy format; check the spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        out.append(f"{path or '(top level)'}: {msg}")
    return out


def parse_policy_text(text: str, source: str = "<policy>") -> dict[str, Any]:
    """YAML or JSON text -> a mapping (JSON is YAML, but its errors read better as JSON)."""
    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        raise PolicyError([f"(file): not valid YAML/JSON: {exc}"], source) from None
    if not isinstance(data, dict):
        raise PolicyError(["(top level): a policy file holds a mapping (key: value pairs)"], source)
    return data


def load_policy(data: Mapping[str, Any], source: str = "<policy>"):
    """A mapping -> TenantPolicy or ServicePolicy (a top-level `service:` key)."""
    from .service_policy import ServicePolicy

    model = ServicePolicy if "service" in data else TenantPolicy
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise PolicyError(format_validation_error(exc), source) from None


def load_policy_file(path: str | Path):
    """Read and validate one policy file (YAML or JSON); raises PolicyError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"(file): cannot read: {exc.strerror}"], str(p)) from None
    return load_policy(parse_policy_text(text, str(p)), str(p))


def dump_policy(policy: BaseModel) -> dict[str, Any]:
    """A policy as a plain mapping that `load_policy` reads back (for writers of policies)."""
    return policy.model_dump(mode="json", exclude_defaults=True)


class PolicySet:
    """Several tenant policies (and at most one service policy) checked together.

    Cross-file rules: a device belongs to at most one tenant; a tenant id appears once.
    `tenant_of(imei)` is the device registry the worker needs.
    """

    def __init__(self, policies: Iterable[Any], sources: Iterable[str] | None = None):
        from .service_policy import ServicePolicy

        policies = list(policies)
        sources = list(sources) if sources is not None else [f"<policy {i}>" for i in range(len(policies))]
        self.tenants: dict[str, TenantPolicy] = {}
        self.service: ServicePolicy | None = None
        self._owner: dict[str, str] = {}
        errors: list[str] = []
        tenant_src: dict[str, str] = {}
        owner_src: dict[str, tuple[str, int]] = {}
        for pol, src in zip(policies, sources):
            if isinstance(pol, ServicePolicy):
                if self.service is not None:
                    errors.append(f"{src}: (top level): a second service policy (only one is allowed)")
                self.service = pol
                continue
            if pol.tenant in self.tenants:
                errors.append(f"{src}: tenant: tenant {pol.tenant!r} is already defined in {tenant_src[pol.tenant]}")
                continue
            self.tenants[pol.tenant] = pol
            tenant_src[pol.tenant] = src
            for i, dev in enumerate(pol.devices):
                if dev.imei in self._owner:
                    other, osrc_i = self._owner[dev.imei], owner_src[dev.imei]
                    errors.append(
                        f"{src}: devices[{i}].imei: device {dev.imei} already belongs to tenant "
                        f"{other!r} ({osrc_i[0]}, devices[{osrc_i[1]}]); a device has one tenant"
                    )
                else:
                    self._owner[dev.imei] = pol.tenant
                    owner_src[dev.imei] = (src, i)
        if errors:
            raise PolicyError(errors)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> PolicySet:
        """Validate every file, then the cross-file rules; all errors in one PolicyError."""
        policies, sources, errors = [], [], []
        for path in paths:
            try:
                policies.append(load_policy_file(path))
                sources.append(str(path))
            except PolicyError as exc:
                errors.extend(f"{exc.source}: {m}" for m in exc.messages)
        if errors:
            raise PolicyError(errors)
        return cls(policies, sources)

    def tenant_of(self, imei: str) -> str | None:
        return self._owner.get(imei)

    def family_of(self, imei: str) -> str:
        t = self._owner.get(imei)
        return self.tenants[t].device_family.get(imei, "FMB") if t else "FMB"

    def registry(self, imeis):
        """Vectorised device registry: (tenant per row or None, family per row) as object
        arrays, one dict lookup per distinct IMEI."""
        import numpy as np

        arr = np.asarray(imeis)
        keys = [str(v) if not isinstance(v, str) else v for v in arr.tolist()]
        memo: dict[str, tuple[str | None, str]] = {}
        tenants = np.empty(len(keys), dtype=object)
        families = np.empty(len(keys), dtype=object)
        tl, fl = [], []
        for k in keys:
            hit = memo.get(k)
            if hit is None:
                hit = memo[k] = (self._owner.get(k), self.family_of(k))
            tl.append(hit[0])
            fl.append(hit[1])
        tenants[:] = tl
        families[:] = fl
        return tenants, families


assert set(FAMILIES) == {"FMB", "64x", "AT"}

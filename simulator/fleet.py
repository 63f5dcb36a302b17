"""The simulated fleet: tenants, their depots, vehicles (trackers), drivers and homes.

Everything is drawn from one numpy Generator seeded by (seed, "fleet"), so a seed gives
the same fleet whatever else the run does. Positions are kept in two forms: degrees for
the outside world (truth, policies) and metres in a local east/north plane around the
tenant's depot, where trips are generated.

Identifiers look like the real ones:
  IMEI      8-digit TAC of a Teltonika model + 6-digit serial + Luhn check digit
  iButton   8 raw bytes as IO 78 carries them: CRC-8, 48-bit serial, family code 0x01
            (1-Wire ROM order reversed; traccar prints the value little-endian, which
            gives the ROM order 01-serial-CRC)
  tacho     16 ASCII characters of an EU driver card number, as IO 147/148 (FMB) or
            195/196 (64x) carry them: first 8 characters, then the last 8
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..anonymize.policy import luhn_check_digit  # one Luhn for the IMEIs we make and the policies check
from ..codecs.iodict import family_of_model

# Codec per model (protocol notes 1): FMB920 speaks Codec 8, FMB130/FMC130 Codec 8E,
# FMB640 Codec 16 (and its 512-byte packet limit, protocol notes 7).
MODELS: dict[str, dict] = {
    "FMB920": {"codec": 0x08, "tac": "35209308", "max_packet": 1280},
    "FMB130": {"codec": 0x8E, "tac": "35630704", "max_packet": 1280},
    "FMC130": {"codec": 0x8E, "tac": "86075904", "max_packet": 1280},
    "FMB640": {"codec": 0x10, "tac": "35209307", "max_packet": 512},
}
MODEL_WEIGHTS = {"FMB920": 0.3, "FMB130": 0.35, "FMC130": 0.2, "FMB640": 0.15}

# Depot cities: (name, lat, lon, UTC offset in hours used for the working day, IANA zone).
CITIES = (
    ("berlin", 52.5200, 13.4050, 1, "Europe/Berlin"),
    ("stockholm", 59.3293, 18.0686, 1, "Europe/Stockholm"),
    ("vilnius", 54.6872, 25.2797, 2, "Europe/Vilnius"),
    ("madrid", 40.4168, -3.7038, 1, "Europe/Madrid"),
    ("warsaw", 52.2297, 21.0122, 1, "Europe/Warsaw"),
    ("lyon", 45.7640, 4.8357, 1, "Europe/Paris"),
    ("porto", 41.1579, -8.6291, 0, "Europe/Lisbon"),
    ("tallinn", 59.4370, 24.7536, 2, "Europe/Tallinn"),
)
COUNTRY = {"berlin": "D", "stockholm": "S", "vilnius": "LT", "madrid": "E", "warsaw": "PL",
           "lyon": "F", "porto": "P", "tallinn": "EST"}

M_PER_DEG_LAT = 110_540.0
M_PER_DEG_LON_EQ = 111_320.0


def luhn_valid(imei: str) -> bool:
    return len(imei) == 15 and imei.isdigit() and luhn_check_digit(imei[:14]) == int(imei[14])


def _crc8_maxim(data: bytes) -> int:
    """The 1-Wire (Dallas/Maxim) CRC-8 that closes an iButton ROM code."""
    crc = 0
    for b in data:
        for _ in range(8):
            mix = (crc ^ b) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            b >>= 1
    return crc


@dataclass(frozen=True)
class Geo:
    """Degrees <-> local metres (east x, north y) around an origin; equirectangular,
    accurate to well under a metre within the ~50 km a tenant's vehicles roam."""

    lat0: float
    lon0: float

    @property
    def m_per_deg_lon(self) -> float:
        return M_PER_DEG_LON_EQ * math.cos(math.radians(self.lat0))

    def to_deg(self, x, y):
        return self.lat0 + np.asarray(y) / M_PER_DEG_LAT, self.lon0 + np.asarray(x) / self.m_per_deg_lon

    def to_m(self, lat, lon):
        return (np.asarray(lon) - self.lon0) * self.m_per_deg_lon, (np.asarray(lat) - self.lat0) * M_PER_DEG_LAT


@dataclass
class Driver:
    index: int                 # position in Fleet.drivers
    ibutton: bytes             # 8 raw bytes, as IO 78 carries them
    tenant: str
    home_xy: tuple[float, float]
    home: tuple[float, float]  # (lat, lon)
    tacho_card: str | None     # 16 ASCII characters, or None
    private_mode: bool         # uses the private-mode switch (IO 391) on evening trips
    garage: bool               # parks in a garage at home: no GNSS fix there

    @property
    def id(self) -> str:
        return self.ibutton.hex()

    @property
    def ibutton_int(self) -> int:
        return int.from_bytes(self.ibutton, "big")


@dataclass
class Vehicle:
    index: int                 # position in Fleet.vehicles (also the device's seed stream)
    imei: str
    model: str
    tenant: str
    primary: int               # driver index: drives most days, parks at their home
    secondary: int | None      # driver index of an afternoon-shift driver, or None
    transport: str             # "tcp" or "udp"
    move_period_s: int         # record period while moving
    stop_period_s: int         # record period while parked
    send_period_s: int         # how often buffered records are sent
    min_records: int           # ... once at least this many are buffered while driving
    phase_s: int               # offset of the device's clocks, so devices don't beat together

    @property
    def codec(self) -> int:
        return MODELS[self.model]["codec"]

    @property
    def family(self) -> str:
        return family_of_model(self.model)

    @property
    def max_packet(self) -> int:
        return MODELS[self.model]["max_packet"]


@dataclass
class Tenant:
    index: int
    id: str
    city: str
    timezone: str
    utc_offset_h: int
    depot: tuple[float, float]  # (lat, lon)
    geo: Geo
    road_theta: float           # orientation of the street grid, radians
    vehicles: list[int] = field(default_factory=list)
    drivers: list[int] = field(default_factory=list)


@dataclass
class Fleet:
    tenants: list[Tenant]
    vehicles: list[Vehicle]
    drivers: list[Driver]
    unknown_imeis: list[str]    # Luhn-valid IMEIs of devices no tenant owns

    def tenant(self, tid: str) -> Tenant:
        return next(t for t in self.tenants if t.id == tid)


def _imei(rng: np.random.Generator, tac: str, used: set[str]) -> str:
    while True:
        body = tac + f"{int(rng.integers(0, 1_000_000)):06d}"
        imei = body + str(luhn_check_digit(body))
        if imei not in used:
            used.add(imei)
            return imei


def _ibutton(rng: np.random.Generator, used: set[bytes]) -> bytes:
    while True:
        serial = rng.integers(1, 1 << 48, dtype=np.uint64)
        rom = bytes([0x01]) + int(serial).to_bytes(6, "little")
        raw = bytes([_crc8_maxim(rom)]) + rom[1:][::-1] + bytes([0x01])
        if raw not in used:
            used.add(raw)
            return raw


def _polar(rng: np.random.Generator, rmin: float, rmax: float) -> tuple[float, float]:
    r = float(rng.uniform(rmin, rmax))
    a = float(rng.uniform(0, 2 * math.pi))
    return r * math.cos(a), r * math.sin(a)


def build_fleet(seed: int, n_tenants: int, n_vehicles: int, n_unknown: int | None = None) -> Fleet:
    """`n_vehicles` in total, dealt round-robin over `n_tenants` tenants."""
    if n_tenants < 1 or n_vehicles < n_tenants:
        raise ValueError("need at least one tenant and at least one vehicle per tenant")
    rng = np.random.default_rng([seed, 0xF1EE7])
    used_imei: set[str] = set()
    used_ib: set[bytes] = set()
    tenants: list[Tenant] = []
    for i in range(n_tenants):
        name, lat, lon, off, tz = CITIES[i % len(CITIES)]
        # Tenants sharing a city (more tenants than cities) get depots 8-15 km apart.
        dx, dy = _polar(rng, 8000, 15000) if i >= len(CITIES) else (0.0, 0.0)
        g0 = Geo(lat, lon)
        dlat, dlon = g0.to_deg(dx, dy)
        depot = (round(float(dlat), 6), round(float(dlon), 6))
        tenants.append(Tenant(i, f"fleet-{i + 1}", name, tz, off, depot, Geo(*depot),
                              float(rng.uniform(0, math.pi / 2))))
    models = list(MODEL_WEIGHTS)
    weights = np.array(list(MODEL_WEIGHTS.values()))
    vehicles: list[Vehicle] = []
    drivers: list[Driver] = []

    def new_driver(t: Tenant, private_ok: bool) -> Driver:
        hx, hy = _polar(rng, 2500, 18000)
        lat, lon = t.geo.to_deg(hx, hy)
        card = None
        if rng.random() < 0.35:
            digits = "".join(str(int(d)) for d in rng.integers(0, 10, 16))
            cc = COUNTRY[t.city]
            card = (cc + digits)[:16]
        d = Driver(len(drivers), _ibutton(rng, used_ib), t.id, (hx, hy),
                   (round(float(lat), 7), round(float(lon), 7)), card,
                   bool(private_ok and rng.random() < 0.5), bool(rng.random() < 0.15))
        drivers.append(d)
        t.drivers.append(d.index)
        return d

    # The first vehicles cover every model once (small test fleets see every codec),
    # the rest follow the weights; every 4th non-FMB640 device (the 2nd, 6th, ...) is on
    # UDP, the FMB640s always on TCP.
    first = [models[int(i)] for i in rng.permutation(len(models))]
    n_other = 0
    for v in range(n_vehicles):
        t = tenants[v % n_tenants]
        model = first[v] if v < len(first) else models[int(rng.choice(len(models), p=weights / weights.sum()))]
        codec = MODELS[model]["codec"]
        # Private mode (IO 391) only fits Codec 8E records (Codec 8 ids are one byte, and
        # 391 is an FMB-family id, so not on the FMB640).
        primary = new_driver(t, private_ok=codec == 0x8E)
        transport = "tcp"
        if model != "FMB640":
            transport = "udp" if n_other % 4 == 1 else "tcp"
            n_other += 1
        vehicles.append(Vehicle(
            index=v, imei=_imei(rng, MODELS[model]["tac"], used_imei), model=model,
            tenant=t.id, primary=primary.index, secondary=None, transport=transport,
            move_period_s=int(rng.choice([10, 15, 20, 30])),
            stop_period_s=int(rng.choice([900, 1800, 3600])),
            send_period_s=int(rng.choice([30, 60, 90, 120])),
            min_records=int(rng.choice([4, 6, 8, 10])),
            phase_s=int(rng.integers(0, 60)),
        ))
        t.vehicles.append(v)
    # Relief drivers: about one per four vehicles, each taking the afternoon shift of one
    # vehicle of their tenant (that is where IO 78 changes mid-day).
    for t in tenants:
        n_relief = max(1, round(len(t.vehicles) / 4))
        picks = rng.choice(len(t.vehicles), size=min(n_relief, len(t.vehicles)), replace=False)
        for k in sorted(int(p) for p in picks):
            veh = vehicles[t.vehicles[k]]
            veh.secondary = new_driver(t, private_ok=False).index
    n_unknown = max(2, n_tenants) if n_unknown is None else n_unknown
    unknown = [_imei(rng, MODELS[models[k % len(models)]]["tac"], used_imei) for k in range(n_unknown)]
    return Fleet(tenants, vehicles, drivers, unknown)


def square(lat: float, lon: float, side_m: float) -> list[list[float]]:
    """A closed GeoJSON ring ([lon, lat] pairs) of a square `side_m` wide centred on a point."""
    g = Geo(lat, lon)
    h = side_m / 2
    ring = []
    for x, y in ((-h, -h), (h, -h), (h, h), (-h, h), (-h, -h)):
        la, lo = g.to_deg(x, y)
        ring.append([round(float(lo), 6), round(float(la), 6)])
    return ring

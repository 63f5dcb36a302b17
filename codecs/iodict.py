"""IO element dictionary and the IO ids that identify a device or a person.

IO meaning is per device family (protocol notes 5.4 and 8): id 69 is GNSS status on FMB
but a driver time on FMB64x; 78 is iButton on FMB. So every lookup is keyed by
(family, id). Families:
  FMB  FMB0xx/1xx/2xx/9xx, FMC/FMM 0xx/1xx/2xx/8xx/9xx, FM3001, FMT100, FMP100, MTB100
  64x  FMB640/641, FMC640/650, FMM640/650 (Codec 16 devices among them)
  AT   asset/personal trackers (TAT1xx, TAT240, TMT250, GH5200, TFT100, TST100)
Unknown ids are not an error anywhere: they pass through as raw values.
"""
from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("FMB", "64x", "AT")
NX = 0  # size of a variable-length (Codec 8E NX) element


@dataclass(frozen=True, slots=True)
class IoSpec:
    id: int
    name: str
    size: int            # 1, 2, 4, 8, or NX (0)
    signed: bool = False
    scale: float = 1.0   # physical value = raw * scale
    unit: str = ""


@dataclass(frozen=True, slots=True)
class IdentifierGroup:
    """IO ids that together carry one identifier of one kind.

    kind       what the identifier names: "driver", "sim", "vehicle", "user",
               "sensor", "beacon", "can_module"; the pseudonym prefix follows it.
    ids        the IO ids in the order their values are joined (one id for most).
    canonical  how the wire values become the one canonical byte string that is
               hashed, so one person gets one pseudonym whatever the device family:
                 "raw8"         the 8 raw bytes, big-endian as on the wire (iButton, RFID)
                 "ascii_concat" the parts' bytes joined, NULs and spaces stripped,
                                upper-cased (driver card numbers, VIN)
                 "iccid"        str(part1) + str(part2) zero-padded (protocol notes 8)
                 "raw"          the value's bytes as they are (NX blobs, names)
    zero_is_absent  a value of 0 means "no identifier present" (iButton with no key):
               it is not a person and stays 0.
    """

    kind: str
    ids: tuple[int, ...]
    canonical: str
    zero_is_absent: bool = True
    name: str = ""


# --- identifying IO ids, from shared/teltonika-protocol.md section 8 --------------
_IDENTIFYING: dict[str, tuple[IdentifierGroup, ...]] = {
    "FMB": (
        IdentifierGroup("driver", (78,), "raw8", name="iButton ID"),
        IdentifierGroup("driver", (8,), "raw8", name="Authorized iButton"),
        IdentifierGroup("driver", (207,), "raw8", name="RFID"),
        IdentifierGroup("driver", (451,), "raw8", name="BLE RFID #1"),
        IdentifierGroup("driver", (452,), "raw8", name="BLE RFID #2"),
        IdentifierGroup("driver", (453,), "raw8", name="BLE RFID #3"),
        IdentifierGroup("driver", (454,), "raw8", name="BLE RFID #4"),
        IdentifierGroup("driver", (264,), "raw", name="Barcode ID"),
        IdentifierGroup("driver", (147, 148), "ascii_concat", name="Driver 1 card ID"),
        IdentifierGroup("driver", (149, 150), "ascii_concat", name="Driver 2 card ID"),
        IdentifierGroup("driver", (403,), "raw", name="Driver name"),
        IdentifierGroup("driver", (406,), "raw", name="Driver card ID"),
        IdentifierGroup("user", (238,), "raw8", name="User ID (BT receiver MAC)"),
        IdentifierGroup("sim", (11, 14), "iccid", name="ICCID"),
        IdentifierGroup("vehicle", (256,), "ascii_concat", name="VIN"),
        IdentifierGroup("vehicle", (325,), "ascii_concat", name="VIN (OBD)"),
        IdentifierGroup("can_module", (101,), "raw8", name="CAN module ID"),
        IdentifierGroup("can_module", (388,), "raw", name="CAN module ID (17)"),
        IdentifierGroup("sensor", (76,), "raw8", name="Dallas temperature ID 1"),
        IdentifierGroup("sensor", (77,), "raw8", name="Dallas temperature ID 2"),
        IdentifierGroup("sensor", (79,), "raw8", name="Dallas temperature ID 3"),
        IdentifierGroup("sensor", (71,), "raw8", name="Dallas temperature ID 4"),
        IdentifierGroup("beacon", (385,), "raw", name="Beacon list"),
        IdentifierGroup("beacon", (548,), "raw", name="Advanced BLE beacon data"),
        IdentifierGroup("beacon", (10828,), "raw", name="EYE sensor list"),
        IdentifierGroup("beacon", (10829,), "raw", name="EYE sensor list 2"),
        IdentifierGroup("beacon", (10831,), "raw", name="EYE beacon list"),
        IdentifierGroup("beacon", (11317,), "raw", name="EYE beacon list 2"),
        IdentifierGroup("user", (500,), "raw", name="Vendor/integrator name"),
    ),
    "64x": (
        IdentifierGroup("driver", (217,), "raw8", name="RFID COM2"),
        IdentifierGroup("driver", (195, 196), "ascii_concat", name="Driver 1 card ID"),
        IdentifierGroup("driver", (197, 198), "ascii_concat", name="Driver 2 card ID"),
        IdentifierGroup("driver", (10518,), "raw", name="Driver 1 name"),
        IdentifierGroup("driver", (10519,), "raw", name="Driver 1 surname"),
        IdentifierGroup("driver", (10520,), "raw", name="Driver 2 name"),
        IdentifierGroup("driver", (10521,), "raw", name="Driver 2 surname"),
        IdentifierGroup("driver", (12001,), "raw", name="Active driver ID"),
        IdentifierGroup("driver", (11708,), "raw", name="DSM active driver name"),
        IdentifierGroup("driver", (12931,), "raw", name="DSM active driver name 2"),
        IdentifierGroup("sim", (218,), "raw8", name="IMSI"),
        IdentifierGroup("vehicle", (528,), "ascii_concat", name="VIN"),
        IdentifierGroup("vehicle", (233, 234, 235), "ascii_concat", name="VIN (tachograph)"),
        IdentifierGroup("can_module", (13,), "raw8", name="CAN module ID"),
        IdentifierGroup("can_module", (529,), "raw", name="CAN module ID (17)"),
        IdentifierGroup("sensor", (62,), "raw8", name="Dallas temperature ID 1"),
        IdentifierGroup("sensor", (63,), "raw8", name="Dallas temperature ID 2"),
        IdentifierGroup("sensor", (64,), "raw8", name="Dallas temperature ID 3"),
        IdentifierGroup("sensor", (65,), "raw8", name="Dallas temperature ID 4"),
        IdentifierGroup("sensor", (5,), "raw8", name="Dallas temperature ID 5"),
        IdentifierGroup("sensor", (7,), "raw8", name="Dallas temperature ID 6"),
        IdentifierGroup("beacon", (548,), "raw", name="Advanced BLE beacon data"),
    ),
    "AT": (
        IdentifierGroup("user", (854,), "raw", name="User ID"),
        IdentifierGroup("user", (891,), "ascii_concat", name="BLE MAC address"),
        IdentifierGroup("beacon", (876,), "ascii_concat", name="Proximity iBeacon UUID"),
        IdentifierGroup("beacon", (385,), "raw", name="Beacon list"),
        IdentifierGroup("beacon", (10828,), "raw", name="EYE sensor list"),
        IdentifierGroup("beacon", (10829,), "raw", name="EYE sensor list 2"),
        IdentifierGroup("beacon", (10831,), "raw", name="EYE beacon list"),
        IdentifierGroup("beacon", (11317,), "raw", name="EYE beacon list 2"),
    ),
}

# Linked to an identifier but not one (kept out of analytics, passed to the tenant).
PERSON_LINKED: dict[str, frozenset[int]] = {
    "FMB": frozenset({136, 404, 405, 407, 408, 409}),
    "64x": frozenset({187, 188, 222, 223}),
    "AT": frozenset(),
}

# Quasi-location: cell ids and area codes. Stripped with positions in private mode.
CELL_IDS: frozenset[int] = frozenset({205, 206, 636, *range(287, 299)})


def identifier_groups(family: str = "FMB") -> tuple[IdentifierGroup, ...]:
    return _IDENTIFYING[_family(family)]


def identifying_ids(family: str = "FMB") -> frozenset[int]:
    """Every IO id whose value identifies a device or a person in this family."""
    return _IDENTIFYING_IDS[_family(family)]


def is_identifying(family: str, io_id: int) -> bool:
    return io_id in _IDENTIFYING_IDS[_family(family)]


def _family(family: str) -> str:
    if family not in _IDENTIFYING:
        raise KeyError(f"unknown device family {family!r}; known: {', '.join(FAMILIES)}")
    return family


_IDENTIFYING_IDS = {
    fam: frozenset(i for g in groups for i in g.ids) for fam, groups in _IDENTIFYING.items()
}


# --- the IO dictionary (common elements of the FMB family) -------------------------
def _specs(*rows: tuple) -> dict[int, IoSpec]:
    return {r[0]: IoSpec(*r) for r in rows}


_FMB = _specs(
    (1, "Digital Input 1", 1), (2, "Digital Input 2", 1), (3, "Digital Input 3", 1),
    (4, "Pulse Counter Din1", 4), (5, "Pulse Counter Din2", 4),
    (6, "Analog Input 2", 2, False, 0.001, "V"),
    (8, "Authorized iButton", 8),
    (9, "Analog Input 1", 2, False, 0.001, "V"),
    (10, "SD Status", 1), (11, "ICCID1", 8), (12, "Fuel Used GPS", 4, False, 0.001, "l"),
    (13, "Fuel Rate GPS", 2, False, 0.01, "l/100km"), (14, "ICCID2", 8),
    (15, "Eco Score", 2, False, 0.01),
    (16, "Total Odometer", 4, False, 1.0, "m"),
    (17, "Axis X", 2, True, 1.0, "mG"), (18, "Axis Y", 2, True, 1.0, "mG"),
    (19, "Axis Z", 2, True, 1.0, "mG"),
    (20, "BLE 2 Battery Voltage", 1), (21, "GSM Signal", 1),
    (24, "Speed", 2, False, 1.0, "km/h"),
    (25, "BLE Temperature #1", 2, True, 0.01, "C"),
    (26, "BLE Temperature #2", 2, True, 0.01, "C"),
    (27, "BLE Temperature #3", 2, True, 0.01, "C"),
    (28, "BLE Temperature #4", 2, True, 0.01, "C"),
    (30, "Number of DTC", 1), (31, "Engine Load", 1, False, 1.0, "%"),
    (32, "Coolant Temperature", 1, True, 1.0, "C"),
    (36, "Engine RPM", 2, False, 1.0, "rpm"), (37, "Vehicle Speed", 1, False, 1.0, "km/h"),
    (48, "Fuel Level", 1, False, 1.0, "%"),
    (66, "External Voltage", 2, False, 0.001, "V"),
    (67, "Battery Voltage", 2, False, 0.001, "V"),
    (68, "Battery Current", 2, False, 0.001, "A"),
    (69, "GNSS Status", 1), (70, "PCB Temperature", 2, True, 0.1, "C"),
    (71, "Dallas Temperature ID 4", 8),
    (72, "Dallas Temperature 1", 4, True, 0.1, "C"),
    (73, "Dallas Temperature 2", 4, True, 0.1, "C"),
    (74, "Dallas Temperature 3", 4, True, 0.1, "C"),
    (75, "Dallas Temperature 4", 4, True, 0.1, "C"),
    (76, "Dallas Temperature ID 1", 8), (77, "Dallas Temperature ID 2", 8),
    (78, "iButton", 8), (79, "Dallas Temperature ID 3", 8),
    (80, "Data Mode", 1), (81, "Vehicle Speed (CAN)", 1, False, 1.0, "km/h"),
    (82, "Accelerator Pedal Position", 1, False, 1.0, "%"),
    (83, "Fuel Consumed", 4, False, 0.1, "l"), (84, "Fuel Level (CAN)", 2, False, 0.1, "l"),
    (85, "Engine RPM (CAN)", 2, False, 1.0, "rpm"),
    (87, "Total Mileage (CAN)", 4, False, 1.0, "m"),
    (89, "Fuel Level (CAN)", 1, False, 1.0, "%"),
    (101, "CAN module ID", 8),
    (113, "Battery Level", 1, False, 1.0, "%"),
    (136, "Tacho Driver Card Presence", 1),
    (147, "Driver 1 ID High", 8), (148, "Driver 1 ID Low", 8),
    (149, "Driver 2 ID High", 8), (150, "Driver 2 ID Low", 8),
    (175, "Auto Geofence", 1), (179, "Digital Output 1", 1), (180, "Digital Output 2", 1),
    (181, "GNSS PDOP", 2, False, 0.1), (182, "GNSS HDOP", 2, False, 0.1),
    (199, "Trip Odometer", 4, False, 1.0, "m"), (200, "Sleep Mode", 1),
    (205, "GSM Cell ID", 2), (206, "GSM Area Code", 2),
    (207, "RFID", 8), (238, "User ID", 8),
    (239, "Ignition", 1), (240, "Movement", 1), (241, "Active GSM Operator", 4),
    (246, "Towing", 1), (247, "Crash Detection", 1), (249, "Jamming", 1),
    (250, "Trip", 1), (251, "Idling", 1), (252, "Unplug", 1), (253, "Green Driving Type", 1),
    (254, "Green Driving Value", 1), (255, "Over Speeding", 1, False, 1.0, "km/h"),
    (256, "VIN", NX), (264, "Barcode ID", NX), (303, "Instant Movement", 1),
    (325, "VIN (OBD)", NX), (385, "Beacon", NX), (388, "CAN module ID (17)", NX),
    (391, "Private Mode", 1), (403, "Driver Name", NX), (406, "Driver Card ID", 4),
    (449, "Ignition On Counter", 4, False, 1.0, "s"),
    (451, "BLE RFID #1", 8), (452, "BLE RFID #2", 8),
    (453, "BLE RFID #3", 8), (454, "BLE RFID #4", 8),
    (548, "Advanced BLE Beacon Data", NX), (636, "UMTS/LTE Cell ID", 4),
)

_64X = _specs(
    (5, "Dallas Temperature ID 5", 8), (7, "Dallas Temperature ID 6", 8),
    (13, "CAN module ID", 8), (62, "Dallas Temperature ID 1", 8),
    (63, "Dallas Temperature ID 2", 8), (64, "Dallas Temperature ID 3", 8),
    (65, "Dallas Temperature ID 4", 8),
    (195, "Driver 1 ID MSB", 8), (196, "Driver 1 ID LSB", 8),
    (197, "Driver 2 ID MSB", 8), (198, "Driver 2 ID LSB", 8),
    (187, "Driver 1 Card Presence", 1), (188, "Driver 2 Card Presence", 1),
    (205, "GSM Cell ID", 2), (206, "GSM Area Code", 2),
    (217, "RFID COM2", 8), (218, "IMSI", 8),
    (233, "VIN 1", 8), (234, "VIN 2", 8), (235, "VIN 3", 1),
    (528, "VIN", NX), (529, "CAN module ID (17)", NX),
    (12001, "Active Driver ID", NX),
)

_AT = _specs((854, "User ID", 4), (891, "BLE MAC address", NX), (876, "Proximity iBeacon UUID", NX))

IO_DICTIONARY: dict[str, dict[int, IoSpec]] = {"FMB": _FMB, "64x": _64X, "AT": _AT}


def io_spec(family: str, io_id: int) -> IoSpec | None:
    """The dictionary entry for (family, id), or None for an id we do not know."""
    return IO_DICTIONARY[_family(family)].get(io_id)


# Model name prefix -> family, for the simulator and for policies naming device models.
_MODEL_PREFIXES = (
    ("FMB64", "64x"), ("FMC64", "64x"), ("FMC65", "64x"), ("FMM64", "64x"),
    ("FMM65", "64x"), ("FM63", "64x"), ("FMB63", "64x"), ("FM6", "64x"),
    ("TAT", "AT"), ("TMT", "AT"), ("GH", "AT"), ("TFT", "AT"), ("TST", "AT"),
    ("FM", "FMB"), ("MTB", "FMB"), ("MSP", "FMB"),
)


def family_of_model(model: str) -> str:
    """FMB130 -> "FMB", FMB640 -> "64x", TAT100 -> "AT". Unknown models: "FMB"."""
    m = model.upper()
    for prefix, fam in _MODEL_PREFIXES:
        if m.startswith(prefix):
            return fam
    return "FMB"

"""Keyed pseudonyms, key epochs and crypto-shredding, location/time coarsening, privacy
zones, private mode and the tenant/service policies. Pure and vectorised: no Kafka,
Faust or aiokafka here (a test walks the imports). See docs/pseudonyms.md and
docs/policies.md.

The worker's entry points:

    from fleetcloak.anonymize import (Keyring, FileKeyStore, load_master_key, PolicySet,
        ProcessorTransform, ControllerTransform, GroupGate, Columns)

Submodules are imported lazily so `fleetcloak policy validate` does not pay for numpy,
shapely or h3.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Secret": "secret",
    "KeyStore": "keystore", "MemoryKeyStore": "keystore", "FileKeyStore": "keystore", "TableKeyStore": "keystore",
    "MasterKey": "keystore", "load_master_key": "keystore", "KeyStoreError": "keystore",
    "KeyUnwrapError": "keystore", "MasterKeyMissing": "keystore",
    "Keyring": "keys", "EpochDestroyed": "keys", "EpochMissing": "keys", "SubjectErased": "keys",
    "epoch_id": "epochs", "epoch_ids": "epochs", "parse_epoch": "epochs",
    "Pseudonymizer": "pseudonyms",
    "canonical_imei": "canonical", "canonical_group": "canonical",
    "snap_to_grid": "coarsen", "grid_cells": "coarsen", "h3_cells": "coarsen", "h3_centres": "coarsen",
    "truncate_time": "coarsen", "bucket": "coarsen", "round_to": "coarsen",
    "ZoneIndex": "zones",
    "private_mask": "private_mode", "private_hours_mask": "private_mode",
    "TenantPolicy": "policy", "PolicySet": "policy", "PolicyError": "policy",
    "load_policy": "policy", "load_policy_file": "policy", "dump_policy": "policy",
    "ServicePolicy": "service_policy",
    "RecordIds": "record_id",
    "Columns": "transform", "ProcessorTransform": "transform", "ControllerTransform": "transform",
    "ProcessorResult": "transform", "ControllerResult": "transform", "GroupGate": "transform",
    "OMIT": "transform", "KEEP": "transform",
    "columns_from_batch": "batch_columns", "record_contents": "batch_columns",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'fleetcloak.anonymize' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value

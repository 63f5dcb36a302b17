"""Codec test helpers: the hypothesis strategies module, loaded by path (importlib mode)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load(name: str, filename: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


codec_strategies = _load("fleetcloak_codec_strategies", "_strategies.py")

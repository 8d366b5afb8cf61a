"""Locater (TPAMI 2023): ``config``, ``model``, ``convert`` and the registry ``entries``.

Nothing is imported eagerly, so that listing the registry does not load model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Locater", "LocaterConfig", "LocaterState", "convert", "convert_to_folder"]

_LAZY = {
    "Locater": ".model",
    "LocaterState": ".model",
    "LocaterConfig": ".config",
    "convert": ".convert",
    "convert_to_folder": ".convert",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

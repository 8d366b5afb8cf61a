"""LAVT (CVPR 2022): ``config``, ``model``, ``convert`` and the registry ``entries``.

Nothing is imported eagerly, so that listing the registry does not load model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LAVT", "LAVTConfig", "LAVTVideo", "LAVTVideoConfig", "convert", "convert_to_folder"]

_LAZY = {
    "LAVT": ".model",
    "LAVTConfig": ".config",
    "LAVTVideo": ".video",
    "LAVTVideoConfig": ".video_config",
    "convert": ".convert",
    "convert_to_folder": ".convert",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""VLP-RVOS (arXiv 2405.10610): ``config``, ``model``, ``modules`` and the registry ``entries``; a frozen
vision-language pre-trained backbone (CLIP or VLMo) whose converters live in :mod:`.backbones`,
:mod:`.clip_convert` and :mod:`.vlmo`.

Nothing is imported eagerly, so that listing the registry does not load model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["VLPRVOS", "VLPRVOSConfig", "build", "tiny_config"]

_LAZY = {
    "VLPRVOS": ".model",
    "VLPRVOSConfig": ".config",
    "build": ".entries",
    "tiny_config": ".config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

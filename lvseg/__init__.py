"""lvseg: a model zoo for language-guided (referring) video object segmentation.

The public API is small and imported lazily, so ``import lvseg`` stays fast::

    import lvseg
    lvseg.list_models("referformer-*")
    model = lvseg.load("referformer-swin-l")
    result = model.predict("clip.mp4", "a dog jumping over a fence")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "load",
    "list_models",
    "model_info",
    "Predictor",
    "VideoSegmentation",
    "evaluate",
    "train",
    "errors",
]

_LAZY = {
    "load": ("lvseg.hub", "load"),
    "list_models": ("lvseg.registry", "list_models"),
    "model_info": ("lvseg.registry", "model_info"),
    "Predictor": ("lvseg.predictor", "Predictor"),
    "VideoSegmentation": ("lvseg.predictor", "VideoSegmentation"),
    "evaluate": ("lvseg.metrics.evaluate", "evaluate"),
    "train": ("lvseg.train.api", "train"),
    "errors": ("lvseg.errors", None),
    "data": ("lvseg.data", None),
    "metrics": ("lvseg.metrics", None),
    "ops": ("lvseg.ops", None),
    "models": ("lvseg.models", None),
    "hub": ("lvseg.hub", None),
    "registry": ("lvseg.registry", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

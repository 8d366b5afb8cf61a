"""Model families. Importing this package is cheap (no torch): a family's code is imported when a model is built,
so ``lvseg list`` reads the registry entries without loading any model code."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import ModelConfig, PreprocessConfig, RVOSModel

__all__ = ["FAMILIES", "ModelConfig", "PreprocessConfig", "RVOSModel", "get_model_class", "register_family"]

# architecture name (config.json "architecture") -> "module:Class" of its RVOSModel subclass
FAMILIES: dict[str, str] = {}
FAMILIES["referformer"] = ".referformer.model:ReferFormer"
FAMILIES["mttr"] = ".mttr.model:MTTR"
FAMILIES["lavt"] = ".lavt.model:LAVT"
FAMILIES["lavt_video"] = ".lavt.video:LAVTVideo"
FAMILIES["vlp_rvos"] = ".vlp_rvos.model:VLPRVOS"
FAMILIES["locater"] = ".locater.model:Locater"

_CLASSES: dict[str, type[RVOSModel]] = {}


def register_family(model_class: type[RVOSModel]) -> type[RVOSModel]:
    """Make a model class loadable by its ``architecture`` name (usable as a class decorator)."""
    name = model_class.architecture
    if not name:
        raise ConfigError(f"{model_class.__name__} has no 'architecture' name")
    _CLASSES[name] = model_class
    return model_class


def get_model_class(architecture: str) -> type[RVOSModel]:
    """The RVOSModel subclass for an architecture name, importing its family on first use."""
    if architecture in _CLASSES:
        return _CLASSES[architecture]
    if architecture not in FAMILIES:
        known = sorted(set(FAMILIES) | set(_CLASSES))
        raise ConfigError(
            f"unknown architecture {architecture!r} (known: {', '.join(known) or 'none'}); "
            "the model was probably saved by a newer lvseg: upgrade lvseg (pip install -U lvseg)"
        )
    module_name, class_name = FAMILIES[architecture].split(":")
    cls = getattr(importlib.import_module(module_name, __name__), class_name)
    _CLASSES[architecture] = cls
    return cls


def __getattr__(name: str) -> Any:
    if name in ("ModelConfig", "PreprocessConfig", "RVOSModel"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Training: ``lvseg.train(...)`` / ``lvseg train ...`` (see :func:`lvseg.train.api.train` and docs/train.md).

``lvseg.train`` is both this package and the :func:`~lvseg.train.api.train` function: calling the package calls
the function, so ``lvseg.train(model=..., train_data=...)`` works whichever was imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["train", "main_cli", "TrainConfig", "TrainResult"]


def __getattr__(name: str) -> Any:
    if name in ("train", "main_cli"):
        from . import api

        return getattr(api, name)
    if name in ("TrainConfig", "TrainResult", "Trainer"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'lvseg.train' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

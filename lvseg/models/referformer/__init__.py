"""ReferFormer (CVPR 2022). Importing this package is cheap; the model is in :mod:`.model`."""

from .config import ReferFormerConfig

__all__ = ["ReferFormerConfig"]

"""Multi-scale deformable attention (MSDA), the core op of Deformable-DETR-style RVOS models.

- :func:`ms_deform_attn` — the op, with Deformable-DETR's shapes and semantics, dispatched to a backend:
  ``cuda`` (compiled CUDA kernels), ``cpu`` (compiled C++ kernels) or ``reference`` (pure PyTorch).
- :class:`MSDeformAttn` — the layer (offsets, weights, value/output projections) used by the models.
- :func:`ms_deform_attn_reference` — the pure-PyTorch implementation.

The compiled backends are built on first use into a cache (see :mod:`lvseg.ops.build` and docs/ops.md);
``LVSEG_MSDA_BACKEND=reference|cpu|cuda`` overrides the automatic choice.
"""

from lvseg.ops.function import BACKEND_ENV, BACKENDS, ms_deform_attn, select_backend
from lvseg.ops.modules import MSDeformAttn
from lvseg.ops.reference import ms_deform_attn_reference

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "MSDeformAttn",
    "select_backend",
    "BACKENDS",
    "BACKEND_ENV",
]

"""Input handling shared by the metric functions: numpy or torch masks in, the same kind of numbers out.

The metrics compute on CPU with NumPy: reductions over boolean masks (counting pixels, ``any``) are about ten
times faster in NumPy than in torch on CPU, and the masks of a benchmark live on the CPU anyway. Torch inputs
(on any device) are accepted and the results are returned as float64 tensors on the input's device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError

__all__ = ["as_mask_array", "check_same_shape", "wrap_result"]


def as_mask_array(x: Any, name: str) -> tuple[np.ndarray, torch.device | None]:
    """Return ``x`` as a boolean numpy array [..., H, W] (nonzero = foreground) and its torch device (or None).

    Accepts numpy arrays, torch tensors and nested lists of any real dtype; like the official DAVIS code, every
    nonzero value counts as foreground.
    """
    device = None
    if isinstance(x, torch.Tensor):
        device = x.device
        arr = x.detach().cpu().numpy() if x.dtype != torch.bfloat16 else x.detach().float().cpu().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, (list, tuple)):
        arr = np.asarray(x)
    else:
        raise InvalidInputError(
            f"{name} must be a numpy array or torch tensor of shape [H, W] or [..., H, W], got {type(x).__name__}"
        )
    if arr.ndim < 2:
        raise InvalidInputError(f"{name} must have shape [H, W] or [..., H, W], got shape {tuple(arr.shape)}")
    if arr.shape[-1] == 0 or arr.shape[-2] == 0:
        raise InvalidInputError(f"{name} has an empty spatial size {tuple(arr.shape[-2:])}; masks need H, W >= 1")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "biuf":
            raise InvalidInputError(f"{name} has dtype {arr.dtype}; pass boolean, integer or float masks")
        arr = arr != 0
    return arr, device


def check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise InvalidInputError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
            "resize the prediction to the ground-truth resolution first (nearest neighbour)"
        )


def wrap_result(values: np.ndarray, device: torch.device | None) -> Any:
    """float64 values [...] -> a Python float for 0-d, else numpy (numpy inputs) or torch on ``device``."""
    if values.ndim == 0:
        return float(values)
    if device is None:
        return values
    return torch.from_numpy(np.ascontiguousarray(values)).to(device)

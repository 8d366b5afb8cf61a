"""Input handling shared by the metric functions: numpy or torch masks in, the same kind of numbers out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError

__all__ = ["as_mask_tensor", "check_same_shape", "wrap_result"]


def as_mask_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``x`` as a boolean torch tensor [..., H, W] (nonzero = foreground) and whether it was numpy.

    Accepts numpy arrays, torch tensors and nested lists of any dtype; like the official DAVIS code,
    every nonzero value counts as foreground.
    """
    if isinstance(x, torch.Tensor):
        t, was_numpy = x, False
    elif isinstance(x, np.ndarray):
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    elif isinstance(x, (list, tuple)):
        t, was_numpy = torch.from_numpy(np.asarray(x)), True
    else:
        raise InvalidInputError(
            f"{name} must be a numpy array or torch tensor of shape [H, W] or [..., H, W], got {type(x).__name__}"
        )
    if t.ndim < 2:
        raise InvalidInputError(f"{name} must have shape [H, W] or [..., H, W], got shape {tuple(t.shape)}")
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise InvalidInputError(f"{name} has an empty spatial size {tuple(t.shape[-2:])}; masks need H, W >= 1")
    if t.dtype != torch.bool:
        if t.is_complex():
            raise InvalidInputError(f"{name} has complex dtype {t.dtype}; pass boolean or integer masks")
        t = t != 0
    return t, was_numpy


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise InvalidInputError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
            "resize the prediction to the ground-truth resolution first (nearest neighbour)"
        )


def wrap_result(values: torch.Tensor, as_numpy: bool) -> Any:
    """float64 values [...] -> a Python float for 0-d, else numpy or torch (as the inputs were)."""
    if values.ndim == 0:
        return float(values.item())
    if as_numpy:
        return values.cpu().numpy()
    return values

"""``ms_deform_attn``: input checks, backend selection and the autograd wrapper of the compiled kernels."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from lvseg.errors import InvalidInputError, UnsupportedDtypeError
from lvseg.ops.reference import ms_deform_attn_reference, shapes_as_list

__all__ = ["ms_deform_attn", "select_backend", "BACKENDS", "BACKEND_ENV"]

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpu", "cuda")
#: environment variable that overrides the automatic backend choice
BACKEND_ENV = "LVSEG_MSDA_BACKEND"
#: environment variable that asks the CUDA backward for a deterministic (atomics-free) grad_value
DETERMINISTIC_ENV = "LVSEG_MSDA_DETERMINISTIC"

ShapesLike = torch.Tensor | Sequence[Sequence[int]]
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _requested_backend(backend: str | None) -> str | None:
    """The explicitly requested backend (argument first, then the environment), or None for automatic."""
    source = "backend argument"
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or None
        source = f"{BACKEND_ENV} environment variable"
    if backend is None:
        return None
    name = backend.strip().lower()
    if name in ("", "auto"):
        return None
    if name not in BACKENDS:
        raise InvalidInputError(
            f"ms_deform_attn: unknown backend {backend!r} (from the {source}); use one of "
            f"{', '.join(BACKENDS)} or 'auto'."
        )
    return name


def select_backend(device: torch.device | str, backend: str | None = None) -> str:
    """Name of the backend that will run for tensors on ``device``: ``"reference"``, ``"cpu"`` or ``"cuda"``.

    ``backend`` (or else ``$LVSEG_MSDA_BACKEND``) forces a choice; otherwise CUDA tensors use ``cuda`` and CPU
    tensors ``cpu``; any other device uses ``reference``. A compiled backend whose build fails is reported
    once (a warning) and replaced by ``reference``. This may trigger the one-off build of the extension.
    """
    device = torch.device(device)
    requested = _requested_backend(backend)
    if requested is None:
        requested = device.type if device.type in ("cpu", "cuda") else "reference"
    if requested == "reference":
        return "reference"
    if requested != device.type:
        raise InvalidInputError(
            f"ms_deform_attn: backend {requested!r} cannot run tensors on {device.type!r}; move the tensors to "
            f"{requested!r}, or choose another backend (argument `backend` or ${BACKEND_ENV})."
        )
    from lvseg.ops import build

    return requested if build.load_extension(requested) is not None else "reference"


def _check_inputs(
    value: torch.Tensor,
    spatial_shapes: ShapesLike,
    level_start_index: torch.Tensor | Sequence[int] | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> list[tuple[int, int]]:
    """Validate shapes, dtypes and devices; return the level shapes as python ints."""
    for name, t in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dtype not in _FLOAT_DTYPES:
            raise UnsupportedDtypeError(
                f"ms_deform_attn: {name} has dtype {t.dtype}; use float32, float64, float16 or bfloat16."
            )
        if t.device != value.device:
            raise InvalidInputError(
                f"ms_deform_attn: {name} is on {t.device} but value is on {value.device}; put all inputs on one device."
            )
    if value.dim() != 4:
        raise InvalidInputError(f"ms_deform_attn: value must be [N, S, M, D], got shape {tuple(value.shape)}.")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise InvalidInputError(
            "ms_deform_attn: sampling_locations must be [N, Lq, M, L, P, 2], got shape "
            f"{tuple(sampling_locations.shape)}."
        )
    n, s, m, _ = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m:
        raise InvalidInputError(
            f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} must have N={n} and M={m} "
            f"like value {tuple(value.shape)}."
        )
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, n_points):
        raise InvalidInputError(
            f"ms_deform_attn: attention_weights must be [N, Lq, M, L, P] = {(n, lq, m, n_levels, n_points)}, "
            f"got {tuple(attention_weights.shape)}."
        )
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise InvalidInputError(
                f"ms_deform_attn: spatial_shapes must be [L, 2] (H, W), got shape {tuple(spatial_shapes.shape)}."
            )
        if spatial_shapes.is_floating_point() or spatial_shapes.is_complex():
            raise InvalidInputError(
                f"ms_deform_attn: spatial_shapes must be an integer tensor, got {spatial_shapes.dtype}."
            )
    shapes = shapes_as_list(spatial_shapes)
    if len(shapes) != n_levels:
        raise InvalidInputError(
            f"ms_deform_attn: spatial_shapes has {len(shapes)} levels but sampling_locations has L={n_levels}."
        )
    if any(h < 1 or w < 1 for h, w in shapes):
        raise InvalidInputError(f"ms_deform_attn: every level must be at least 1x1, got spatial_shapes {shapes}.")
    total = sum(h * w for h, w in shapes)
    if total != s:
        raise InvalidInputError(
            f"ms_deform_attn: value has S={s} positions but spatial_shapes {shapes} sum to {total}; value must "
            "hold all levels flattened one after the other."
        )
    if level_start_index is not None:
        starts = (
            level_start_index.detach().to("cpu", torch.int64).tolist()
            if isinstance(level_start_index, torch.Tensor)
            else [int(i) for i in level_start_index]
        )
        expected, acc = [], 0
        for h, w in shapes:
            expected.append(acc)
            acc += h * w
        if list(starts) != expected:
            raise InvalidInputError(
                f"ms_deform_attn: level_start_index {starts} does not match spatial_shapes {shapes}; it must be "
                f"the start of each level in S, i.e. {expected}."
            )
    return shapes


class _MSDeformAttnCompiled(torch.autograd.Function):
    """Autograd wrapper of a compiled extension's ``forward``/``backward``.

    The extension takes contiguous value ``[N, S, M, D]`` (any float dtype), int64 shapes/starts on the
    value's device, and sampling locations/weights in the accumulation dtype (float64 for float64 values,
    float32 otherwise).
    """

    @staticmethod
    def forward(
        ctx: Any,
        ext: Any,
        deterministic: bool,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
    ) -> torch.Tensor:
        output = ext.forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        ctx.ext = ext
        ctx.deterministic = deterministic
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        need_value = ctx.needs_input_grad[2]
        grad_value, grad_locations, grad_weights = ctx.ext.backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
            need_value,
            ctx.deterministic,
        )
        return (None, None, grad_value if need_value else None, None, None, grad_locations, grad_weights)


def _deterministic_requested() -> bool:
    env = os.environ.get(DETERMINISTIC_ENV, "").strip().lower()
    return env in ("1", "true", "yes", "on") or torch.are_deterministic_algorithms_enabled()


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: ShapesLike,
    level_start_index: torch.Tensor | Sequence[int] | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention, with Deformable-DETR's shapes and semantics.

    For every batch n, query q and head m::

        out[n, q, m*D:(m+1)*D] = sum_{l, p} attention_weights[n, q, m, l, p]
                                 * bilinear(value level l, head m, at sampling_locations[n, q, m, l, p])

    Bilinear sampling uses ``align_corners=False`` and zero padding (pixel x = loc_x * W_l - 0.5), exactly
    like ``F.grid_sample`` in the reference.

    Args:
        value: ``[N, S, M, D]``, levels flattened one after the other (S = sum of H_l * W_l).
        spatial_shapes: ``[L, 2]`` int64 (H_l, W_l) (a list of pairs is accepted too).
        level_start_index: ``[L]`` int64 start of every level in S (checked against ``spatial_shapes``;
            ``None`` derives it).
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalised (x, y); locations outside [0, 1] are allowed and
            read zeros outside the map.
        attention_weights: ``[N, Lq, M, L, P]``.
        backend: ``"reference"``, ``"cpu"`` or ``"cuda"``; default: ``$LVSEG_MSDA_BACKEND``, else by device.

    Returns:
        ``[N, Lq, M * D]`` in the dtype of ``value``. float16/bfloat16 values are accumulated in float32 by the
        compiled backends; sampling locations and weights are used in float32 (float64 for float64 values).

    Raises:
        InvalidInputError: inconsistent shapes, devices or an unknown/mismatched backend.
        UnsupportedDtypeError: non-floating inputs.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing() or _is_compiling():
        # tracing/export sees the pure-PyTorch graph
        return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)
    shapes = _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    name = select_backend(value.device, backend)
    if name == "reference":
        return ms_deform_attn_reference(value, shapes, sampling_locations, attention_weights)

    from lvseg.ops import build

    ext = build.load_extension(name)
    acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    shapes_t = _as_index_tensor(spatial_shapes, shapes, value.device)
    starts, acc = [], 0
    for h, w in shapes:
        starts.append(acc)
        acc += h * w
    starts_t = _as_index_tensor(level_start_index, starts, value.device)
    return _MSDeformAttnCompiled.apply(
        ext,
        _deterministic_requested(),
        value.contiguous(),
        shapes_t,
        starts_t,
        sampling_locations.to(acc_dtype).contiguous(),
        attention_weights.to(acc_dtype).contiguous(),
    )


def _as_index_tensor(given: Any, values: list, device: torch.device) -> torch.Tensor:
    """``given`` if it is already a usable int64 tensor on ``device`` (no copy), else a new one from ``values``
    (already validated to describe the same levels)."""
    if isinstance(given, torch.Tensor) and given.dtype == torch.int64 and given.device == device:
        return given.contiguous()
    return torch.tensor(values, dtype=torch.int64, device=device)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())

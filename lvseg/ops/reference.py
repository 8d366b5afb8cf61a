"""Pure-PyTorch multi-scale deformable attention (the ``reference`` backend).

This is the same computation as Deformable-DETR's ``ms_deform_attn_core_pytorch`` (official commit
11169a60c33333af00a4849f1808023eba96a931): one bilinear ``grid_sample`` per feature level with
``align_corners=False`` and zero padding, then a weighted sum over levels and points. The operations are
done in the same order as upstream, so results agree with it bit for bit on the same device and dtype.

It is always available, differentiable to any order, and traceable/exportable, but it materialises the
sampled values of every point (``N*M x D x Lq x L*P`` elements), which makes it slow and memory hungry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_reference", "shapes_as_list"]

ShapesLike = torch.Tensor | Sequence[Sequence[int]]


def shapes_as_list(spatial_shapes: ShapesLike) -> list[tuple[int, int]]:
    """Return ``spatial_shapes`` ([L, 2] tensor or nested sequence of (H, W)) as a list of int pairs."""
    if isinstance(spatial_shapes, torch.Tensor):
        rows = spatial_shapes.detach().to("cpu", torch.int64).tolist()
    else:
        rows = [list(r) for r in spatial_shapes]
    return [(int(h), int(w)) for h, w in rows]


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: ShapesLike,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with ``F.grid_sample``.

    Args:
        value: ``[N, S, M, D]`` values of all levels, flattened level after level (S = sum of H_l * W_l).
        spatial_shapes: ``[L, 2]`` (H_l, W_l) of every level (tensor or list of pairs).
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalised (x, y); (0, 0) is the top-left corner of the
            top-left pixel and (1, 1) the bottom-right corner of the bottom-right pixel.
        attention_weights: ``[N, Lq, M, L, P]`` weight of every sampled point.

    Returns:
        ``[N, Lq, M * D]`` attended values, in the dtype of ``value``.
    """
    shapes = shapes_as_list(spatial_shapes)
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    # grid_sample needs one dtype for input and grid; follow the value's dtype like upstream does.
    sampling_locations = sampling_locations.to(value.dtype)
    attention_weights = attention_weights.to(value.dtype)

    per_level_values = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample works in [-1, 1] coordinates.
    grids = 2 * sampling_locations - 1
    sampled_per_level = []
    for level, (h, w) in enumerate(shapes):
        # [N, H*W, M, D] -> [N, M*D, H*W] -> [N*M, D, H, W]
        level_map = per_level_values[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N, M, Lq, P, 2] -> [N*M, Lq, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> [N*M, D, Lq, P]
        sampled_per_level.append(
            F.grid_sample(level_map, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [N*M, D, Lq, L, P] -> [N*M, D, Lq, L*P]
    sampled = torch.stack(sampled_per_level, dim=-2).flatten(-2)
    # [N, Lq, M, L, P] -> [N, M, Lq, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    # weighted sum over L*P -> [N*M, D, Lq] -> [N, M*D, Lq] -> [N, Lq, M*D]
    out = (sampled * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()

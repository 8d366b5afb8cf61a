"""``MSDeformAttn``: the multi-scale deformable attention layer of Deformable-DETR and the RVOS models.

Parameter names, shapes and initialisation follow Deformable-DETR (official commit
11169a60c33333af00a4849f1808023eba96a931), so official checkpoints load without renaming:
``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from lvseg.errors import ConfigError, InvalidInputError
from lvseg.ops.function import ms_deform_attn

__all__ = ["MSDeformAttn"]

logger = logging.getLogger(__name__)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021).

    Every query attends to ``n_points`` sampled locations per head and per level, placed around its reference
    point by learned offsets, with learned weights normalised (softmax) jointly over levels and points.

    Args:
        d_model: channels C of queries and values; must be divisible by ``n_heads``.
        n_levels: number of feature levels L.
        n_heads: number of attention heads M (each of D = C / M channels).
        n_points: sampling points P per head and level.
        backend: force an op backend (``"reference"``, ``"cpu"``, ``"cuda"``); ``None`` chooses automatically
            (see :func:`lvseg.ops.ms_deform_attn`).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"MSDeformAttn: {name} must be a positive int, got {v!r}.")
        if d_model % n_heads != 0:
            raise ConfigError(
                f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads}); "
                "choose n_heads that divides d_model."
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.head_dim = d_model // n_heads
        self.backend = backend
        # Kept for compatibility with code that reads it; our kernels need no batch chunking.
        self.im2col_step = 64

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable-DETR's initialisation.

        Offsets start at zero weight with a bias that puts head h's points on a ray at angle 2*pi*h/M, point p
        at distance p+1 (in the max-norm), so heads initially look in different directions. Attention weights
        start uniform; the projections are Xavier-uniform with zero bias.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [M, 2]
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        # [M, 2] -> [M, L, P, 2], point p scaled by p + 1
        offsets = directions[:, None, None, :].repeat(1, self.n_levels, self.n_points, 1)
        offsets = offsets * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
            f"n_points={self.n_points}, backend={self.backend!r}"
        )

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
        return_sampling: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend from ``query`` to the multi-level feature map ``input_flatten``.

        Args:
            query: ``[N, Lq, C]``.
            reference_points: ``[N, Lq, L, 2]`` normalised (x, y) in [0, 1] (top-left (0, 0), bottom-right
                (1, 1), padding area included); offsets are divided by each level's (W, H). Or
                ``[N, Lq, L, 4]`` boxes (cx, cy, w, h); offsets are scaled by ``0.5 * (w, h) / n_points``.
            input_flatten: ``[N, S, C]`` all levels flattened, S = sum of H_l * W_l.
            input_spatial_shapes: ``[L, 2]`` int64 (H_l, W_l).
            input_level_start_index: ``[L]`` int64 start of each level in S.
            input_padding_mask: ``[N, S]`` bool, True at padding positions (their values are zeroed).
            return_sampling: also return the sampling locations and attention weights (as ReferFormer's copy of
                this module does).

        Returns:
            ``[N, Lq, C]``; with ``return_sampling`` also sampling locations ``[N, Lq, M, L, P, 2]`` and attention
            weights ``[N, Lq, M, L, P]``.
        """
        if query.dim() != 3 or input_flatten.dim() != 3:
            raise InvalidInputError(
                f"MSDeformAttn: query must be [N, Lq, C] and input_flatten [N, S, C]; got shapes "
                f"{tuple(query.shape)} and {tuple(input_flatten.shape)}."
            )
        n, len_q, _ = query.shape
        n_in, len_in, _ = input_flatten.shape
        if n_in != n:
            raise InvalidInputError(
                f"MSDeformAttn: query has batch {n} but input_flatten has batch {n_in}; they must match."
            )
        if query.shape[-1] != self.d_model or input_flatten.shape[-1] != self.d_model:
            raise InvalidInputError(
                f"MSDeformAttn: expected {self.d_model} channels (d_model), got query {query.shape[-1]} and "
                f"input_flatten {input_flatten.shape[-1]}."
            )
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, len_q, self.n_levels):
            raise InvalidInputError(
                f"MSDeformAttn: reference_points must be [N={n}, Lq={len_q}, L={self.n_levels}, 2 or 4], got "
                f"{tuple(reference_points.shape)}."
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if input_padding_mask.shape != (n, len_in):
                raise InvalidInputError(
                    f"MSDeformAttn: input_padding_mask must be [N={n}, S={len_in}] bool (True = padding), got "
                    f"{tuple(input_padding_mask.shape)}."
                )
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, self.head_dim)

        offsets = self.sampling_offsets(query).view(n, len_q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, len_q, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, dim=-1).view(n, len_q, self.n_heads, self.n_levels, self.n_points)

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            normaliser = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], dim=-1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are relative to the box: half its size per unit, spread over n_points
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise InvalidInputError(
                f"MSDeformAttn: the last dim of reference_points must be 2 (points) or 4 (boxes), got "
                f"{reference_points.shape[-1]}."
            )

        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights, backend=self.backend
        )
        output = self.output_proj(output)
        if return_sampling:
            return output, locations, weights
        return output

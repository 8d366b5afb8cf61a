"""Sine position encodings (DETR family) for 2-D feature maps and 1-D token sequences."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine2D", "PositionEmbeddingSine1D"]


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * (dim_t // 2) / num_feats)


def _interleave_sin_cos(pos: torch.Tensor) -> torch.Tensor:
    """sin on even, cos on odd channels, interleaved: [..., C] -> [..., C]."""
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine2D(nn.Module):
    """2-D sine encoding of a padding mask, Deformable-DETR variant.

    With ``normalize=True`` the cumulative position is offset by ``offset`` (-0.5, Deformable-DETR) and divided
    by the last valid position (+1e-6) before scaling by 2*pi; DETR and MTTR use ``offset=0.0``. Output channels
    are ``(pos_y, pos_x)``, ``2 * num_pos_feats`` in all.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
        offset: float = -0.5,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.offset = offset
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: bool [N, H, W] (True = padding) -> float32 [N, 2 * num_pos_feats, H, W]."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_last, x_last = y_embed[:, -1:, :], x_embed[:, :, -1:]
            if self.offset:
                y_embed, x_embed = y_embed + self.offset, x_embed + self.offset
            y_embed = y_embed / (y_last + eps) * self.scale
            x_embed = x_embed / (x_last + eps) * self.scale
        dim_t = _frequencies(self.num_pos_feats, self.temperature, mask.device)
        pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)
        pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingSine1D(nn.Module):
    """1-D sine encoding of a token padding mask (no -0.5 offset, unlike the 2-D variant)."""

    def __init__(
        self, num_pos_feats: int = 256, temperature: float = 10000.0, normalize: bool = True, scale: float | None = None
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: bool [B, L] (True = padding) -> float32 [B, num_pos_feats, L]."""
        x_embed = (~mask).cumsum(1, dtype=torch.float32)
        if self.normalize:
            x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * self.scale
        dim_t = _frequencies(self.num_pos_feats, self.temperature, mask.device)
        return _interleave_sin_cos(x_embed[:, :, None] / dim_t).permute(0, 2, 1)

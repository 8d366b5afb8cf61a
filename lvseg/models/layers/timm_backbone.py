"""A timm CNN as a four-level (stride 4, 8, 16, 32) backbone, optionally mixing features across frames.

Used for small models trained from scratch (e.g. the embedded Shapes model): any ``timm`` model that supports
``features_only=True`` and has stride-4..32 feature levels works, built with ``pretrained=False`` (weights come
from our checkpoints). ``temporal_kernel > 0`` adds a depthwise temporal convolution after every level (zero
initialised, residual), so a per-frame CNN can see motion: without it a frame-wise backbone cannot tell "moving
left" from "moving right".
"""

from __future__ import annotations

from typing import Any, cast

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import ConfigError

__all__ = ["TimmBackbone", "TemporalMix"]

_STRIDES = (4, 8, 16, 32)


class TemporalMix(nn.Module):
    """Residual depthwise convolution over time: x + conv_t(x) per channel and pixel; zero-init = identity."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            channels, channels, kernel_size=(kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=channels
        )
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(cast(torch.Tensor, self.conv.bias))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: [(b t), C, h, w] -> same shape (frames of a video are consecutive along dim 0)."""
        v = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        v = v + self.conv(v)
        return rearrange(v, "b c t h w -> (b t) c h w")


class TimmBackbone(nn.Module):
    """``timm.create_model(name, features_only=True, pretrained=False)`` restricted to strides 4, 8, 16, 32.

    Args:
        name: a timm model name (e.g. ``"test_convnext"``, ``"resnet18"``).
        temporal_kernel: 0 (per-frame, the default) or an odd kernel size for :class:`TemporalMix` per level.
        gradient_checkpointing: recompute the whole CNN in the backward pass (saves activation memory).
    """

    def __init__(self, name: str, temporal_kernel: int = 0, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        import timm

        if temporal_kernel < 0 or (temporal_kernel and temporal_kernel % 2 == 0):
            raise ConfigError(f"temporal_kernel must be 0 or odd, got {temporal_kernel}")
        try:
            probe = timm.create_model(name, features_only=True, pretrained=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"timm cannot build {name!r} as a feature extractor ({exc}); pick a CNN from "
                "timm.list_models() that supports features_only=True"
            ) from exc
        reductions = list(cast(Any, probe.feature_info).reduction())
        missing = [s for s in _STRIDES if s not in reductions]
        if missing:
            raise ConfigError(
                f"timm model {name!r} has feature strides {reductions}, lacking {missing}; "
                "ReferFormer needs strides 4, 8, 16 and 32"
            )
        indices = tuple(reductions.index(s) for s in _STRIDES)
        self.body = timm.create_model(name, features_only=True, pretrained=False, out_indices=indices)
        self.num_channels = list(cast(Any, self.body.feature_info).channels())
        self.strides = list(_STRIDES)
        self.video = temporal_kernel > 0
        self.temporal = (
            nn.ModuleList(TemporalMix(c, temporal_kernel) for c in self.num_channels) if self.video else None
        )
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> list[torch.Tensor]:
        """x: [N, 3, H, W] (N = b * num_frames) -> four maps [N, C_i, ~H / s_i, ~W / s_i] for s = 4, 8, 16, 32."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            feats = checkpoint(self.body, x, use_reentrant=False)
        else:
            feats = self.body(x)
        feats = list(feats)
        if self.temporal is not None:
            if x.shape[0] % num_frames:
                raise ConfigError(f"{x.shape[0]} frames are not a whole number of {num_frames}-frame videos")
            feats = [mix(f, num_frames) for mix, f in zip(self.temporal, feats)]
        return feats

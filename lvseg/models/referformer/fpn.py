"""ReferFormer's vision-language fusion and cross-modal FPN (the mask-feature decoder)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..layers.position_encoding import PositionEmbeddingSine1D

__all__ = ["VisionLanguageFusion", "VisionLanguageBlock", "CrossModalFPN", "MaskRefiner"]


class VisionLanguageFusion(nn.Module):
    """Early fusion: visual tokens attend to the words; the result *multiplies* the visual tokens (no residual)."""

    def __init__(self, d_model: int, nhead: int, fused_attention: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.fused_attention = fused_attention

    def forward(
        self, visual: torch.Tensor, words: torch.Tensor, words_mask: torch.Tensor, words_pos: torch.Tensor
    ) -> torch.Tensor:
        """visual: [S, B, C]; words, words_pos: [L, B, C]; words_mask: bool [B, L] -> [S, B, C]."""
        attended = self.multihead_attn(
            query=visual,
            key=words + words_pos,
            value=words,
            key_padding_mask=words_mask,
            need_weights=not self.fused_attention,
        )[0]
        return visual * attended


class VisionLanguageBlock(nn.Module):
    """Post-norm block: (spatially reduced) self-attention over all t*h*w tokens, cross-attention to the
    words, FFN. With ``sr_ratio > 1`` queries, keys and values are nearest-downsampled by that ratio and the
    attention output is bilinearly upsampled back."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        sr_ratio: int = 1,
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        # fused_attention: PyTorch's fused kernels (need_weights=False); no [heads, S, S] matrix in memory, but
        # the summation order differs from the official code (~1e-6 relative)
        self.fused_attention = fused_attention
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.sr_ratio = sr_ratio

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        t: int,
        h: int,
        w: int,
        tgt_mask: torch.Tensor,
        memory_mask: torch.Tensor,
        memory_pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """tgt, query_pos: [(t h w), b, C]; tgt_mask: bool [b, (t h w)]; memory, memory_pos: [L, b, C]."""
        b = tgt.shape[1]
        q = k = tgt + query_pos
        v = tgt
        key_mask = tgt_mask
        if self.sr_ratio > 1:
            new_h, new_w = int(h * 1.0 / self.sr_ratio), int(w * 1.0 / self.sr_ratio)

            def down(x: torch.Tensor) -> torch.Tensor:
                x = rearrange(x, "(t h w) b c -> (b t) c h w", t=t, h=h, w=w)
                x = F.interpolate(x, size=(new_h, new_w), mode="nearest")
                return rearrange(x, "(b t) c h w -> (t h w) b c", t=t)

            q, k, v = down(q), down(k), down(v)
            key_mask = tgt_mask.reshape(b * t, h, w)
            key_mask = F.interpolate(key_mask[None].float(), size=(new_h, new_w), mode="nearest").bool()[0]
            key_mask = key_mask.reshape(b, t, new_h, new_w).flatten(1)
        attn = self.self_attn(q, k, value=v, key_padding_mask=key_mask, need_weights=not self.fused_attention)[0]
        if self.sr_ratio > 1:
            attn = rearrange(attn, "(t h w) b c -> (b t) c h w", t=t, h=new_h, w=new_w)
            attn = F.interpolate(attn, size=(h, w), mode="bilinear", align_corners=False)
            attn = rearrange(attn, "(b t) c h w -> (t h w) b c", t=t)
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.multihead_attn(
            query=tgt + query_pos,
            key=memory + memory_pos,
            value=memory,
            key_padding_mask=memory_mask,
            need_weights=not self.fused_attention,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt), inplace=True)))  # [(t h w), b, 2048]: in place
        return self.norm3(tgt + self.dropout3(ffn))


class ConvNorm(nn.Module):
    """Conv2d (no bias) + GroupNorm(8) [+ ReLU]; the weight is ``weight`` and the norm ``norm`` (detectron2 names)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=1)  # detectron2's c2_xavier_fill
        self.norm = nn.GroupNorm(8, out_channels)
        self.padding = kernel_size // 2
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.conv2d(x, self.weight, None, 1, self.padding))
        return F.relu(x, inplace=True) if self.relu else x


class CrossModalFPN(nn.Module):
    """Top-down FPN over [backbone s4, encoder s8, s16, s32] with a vision-language block at every level.

    Index 1 is the stride-4 level, 4 the stride-32 level (``adapter_k`` lateral 1x1 conv, ``layer_k`` 3x3
    output conv, ``cross_attn_k`` the fusion block with self-attention reduction 8, 4, 2, 1).
    """

    def __init__(
        self,
        s4_channels: int,
        conv_dim: int = 256,
        mask_dim: int = 256,
        dim_feedforward: int = 2048,
        nhead: int = 8,
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [s4_channels, conv_dim, conv_dim, conv_dim]
        sr_ratios = [8, 4, 2, 1]
        for k in range(4):
            self.add_module(f"adapter_{k + 1}", ConvNorm(in_channels[k], conv_dim, 1, relu=False))
            self.add_module(f"layer_{k + 1}", ConvNorm(conv_dim, conv_dim, 3, relu=True))
            block = VisionLanguageBlock(
                conv_dim, nhead, dim_feedforward=dim_feedforward, sr_ratio=sr_ratios[k], fused_attention=fused_attention
            )
            for p in block.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            self.add_module(f"cross_attn_{k + 1}", block)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(cast(torch.Tensor, self.mask_features.bias))
        self.text_pos = PositionEmbeddingSine1D(conv_dim, normalize=True)

    def forward(
        self,
        inputs: list[torch.Tensor],
        masks: list[torch.Tensor],
        poses: list[torch.Tensor],
        words: torch.Tensor,
        words_mask: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """Mask features at stride 4.

        Args:
            inputs: [backbone s4, encoder s8, s16, s32] maps [(b t), C_l, H_l, W_l].
            masks, poses: padding masks [(b t), H_l, W_l] and sine encodings of the backbone levels.
            words: [b, L, C] resized word features; words_mask: bool [b, L] (True = padding).

        Returns:
            [(b t), mask_dim, H/4, W/4].
        """
        t = num_frames
        words_pos = self.text_pos(words_mask).permute(2, 0, 1).to(words.dtype)
        words_seq = words.permute(1, 0, 2)
        y = None
        for k in (4, 3, 2, 1):
            x, mask, pos = inputs[k - 1], masks[k - 1], poses[k - 1]
            n, _, h, w = pos.shape
            b = n // t
            feats = rearrange(getattr(self, f"adapter_{k}")(x), "(b t) c h w -> (t h w) b c", b=b, t=t)
            cur = getattr(self, f"cross_attn_{k}")(
                feats,
                words_seq,
                t,
                h,
                w,
                tgt_mask=rearrange(mask, "(b t) h w -> b (t h w)", b=b, t=t),
                memory_mask=words_mask,
                memory_pos=words_pos,
                query_pos=rearrange(pos, "(b t) c h w -> (t h w) b c", b=b, t=t),
            )
            cur = rearrange(cur, "(t h w) b c -> (b t) c h w", t=t, h=h, w=w)
            if y is not None:
                cur = cur + F.interpolate(y, size=cur.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{k}")(cur)
        return self.mask_features(y)


class _GuidedUpsample(nn.Module):
    """``up(x) + proj(relu(norm(conv_k(cat(up(x), guide)))))``: bilinear 2x upsampling plus a residual computed
    from the upsampled features and an image-guide map; ``proj`` (1x1) starts at zero, so at initialisation the
    block is plain bilinear upsampling."""

    def __init__(self, channels: int, guide_channels: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels + guide_channels, hidden, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(min(8, hidden), hidden)
        self.proj = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(cast(torch.Tensor, self.proj.bias))

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=guide.shape[-2:], mode="bilinear", align_corners=False)
        return up + self.proj(F.relu(self.norm(self.conv(torch.cat([up, guide], 1)))))


class MaskRefiner(nn.Module):
    """Image-guided refinement of the stride-4 mask features to stride 1 (lvseg's ``mask_refine`` option; not
    in the official model, whose masks stay at stride 4).

    Two small convolutions on the normalised frames give guide maps at stride 1 and 2 (``channels`` wide); two
    :class:`_GuidedUpsample` steps take the mask features 4 -> 2 -> 1 (a 3x3 step at stride 2, a 1x1 step at
    stride 1). The residual projections start at zero, so a model given this head keeps its (bilinearly
    upsampled) mask features at first and learns the sharper boundaries from there.
    """

    def __init__(self, mask_dim: int, channels: int) -> None:
        super().__init__()
        groups = min(8, channels)
        self.guide1 = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels), nn.ReLU()
        )
        self.guide2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.GroupNorm(groups, channels), nn.ReLU()
        )
        self.up2 = _GuidedUpsample(mask_dim, channels, channels, kernel_size=3)
        self.up1 = _GuidedUpsample(mask_dim, channels, channels, kernel_size=1)

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """features: [n, mask_dim, H/4, W/4] mask features; frames: [n, 3, H, W] normalised input ->
        [n, mask_dim, H, W]."""
        g1 = self.guide1(frames.to(features.dtype))
        g2 = self.guide2(g1)
        return self.up1(self.up2(features, g2), g1)

"""Swin Transformer backbones: 2-D Swin (Swin-Det flavour) and Video Swin, in one implementation.

Both work on token grids ``[B, D, H, W, C]`` with 3-D windows ``(Wd, Wh, Ww)``; 2-D Swin is the case ``D = 1``
with windows ``(1, 7, 7)``, for which the relative-position table and index are identical to the 2-D formula.
The two flavours differ only where the official code bases differ, and both are reproduced exactly:

* **2-D Swin** (Swin-Transformer-Object-Detection, used by ReferFormer): the feature map is padded to a multiple
  of the window *before* the cyclic shift; the window is never shrunk, a map smaller than the window is padded.
  Each stage output (taken before patch merging) goes through its own LayerNorm.
* **Video Swin** (Video-Swin-Transformer as modified by MTTR/ReferFormer): each window dimension is clamped to
  the input size (and that shift set to 0) when the input is not larger than the window, and the
  relative-position index is sliced ``[:N, :N]`` for the actual window volume ``N``. The slicing is only
  geometrically right when only the temporal dimension is clamped, but it is what the released weights were
  trained and evaluated with. Stage outputs are taken before patch merging, without output norms.

timm's Swin is not used because it shifts before padding, which changes results for map sizes that are not
multiples of the window (e.g. 90x160 at 360x640 input), so the released weights would not reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "SwinBackbone",
    "WindowAttention3D",
    "effective_window",
    "shifted_window_mask",
    "shifted_window_regions",
    "ShiftMaskGroups",
]

Triple = tuple[int, int, int]


def effective_window(size: Triple, window: Triple, shift: Triple, clamp: bool) -> tuple[Triple, Triple]:
    """Window and shift actually used for an input of ``size`` (D, H, W).

    With ``clamp`` (Video Swin) a dimension whose size is ``<=`` the window uses the whole size as window and
    no shift; without it (2-D Swin-Det) the configured window and shift are always used.
    """
    if not clamp:
        return window, shift
    use_window, use_shift = list(window), list(shift)
    for i in range(3):
        if size[i] <= window[i]:
            use_window[i] = size[i]
            use_shift[i] = 0
    return tuple(use_window), tuple(use_shift)  # type: ignore[return-value]


def window_partition(x: torch.Tensor, window: Triple) -> torch.Tensor:
    """[B, D, H, W, C] (each dim a multiple of the window) -> [B * nW, Wd * Wh * Ww, C]."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def window_reverse(windows: torch.Tensor, window: Triple, b: int, d: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, Wd, Wh, Ww, C] -> [B, D, H, W, C]."""
    x = windows.view(b, d // window[0], h // window[1], w // window[2], window[0], window[1], window[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def shifted_window_mask(padded: Triple, window: Triple, shift: Triple, device: torch.device) -> torch.Tensor:
    """Additive attention mask [nW, N, N] (0 or -100) separating the regions a cyclic shift brings together."""
    img_mask = torch.zeros((1, *padded, 1), device=device)
    region = 0
    slices = [(slice(-window[i]), slice(-window[i], -shift[i]), slice(-shift[i], None)) for i in range(3)]
    for sd in slices[0]:
        for sh in slices[1]:
            for sw in slices[2]:
                img_mask[:, sd, sh, sw, :] = region
                region += 1
    mask_windows = window_partition(img_mask, window).squeeze(-1)  # [nW, N]
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def _relative_position_index(window: Triple) -> torch.Tensor:
    """[N, N] index into the (2Wd-1)(2Wh-1)(2Ww-1) bias table for every pair of tokens in a full window."""
    coords = torch.stack(torch.meshgrid([torch.arange(s) for s in window], indexing="ij")).flatten(1)  # [3, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 3]
    rel = rel + torch.tensor([s - 1 for s in window])
    strides = torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return (rel * strides).sum(-1)


def _add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` (``y`` broadcast), in place in ``x`` where that gives the same dtype (under bf16 autocast the
    fp32 bias promotes the bf16 logits, and the out-of-place sum keeps that promotion)."""
    return x.add_(y) if torch.promote_types(x.dtype, y.dtype) == x.dtype else x + y


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside (shifted) windows with a learned relative-position bias."""

    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: Triple, num_heads: int, qkv_bias: bool = True, fused: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        # fused: scaled_dot_product_attention with the bias (+ shift mask) as attn_mask, in chunks of windows
        self.fused = fused
        self._index_cache: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.scale = (dim // num_heads) ** -0.5
        table_size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # deterministic from the window size, so not saved with the weights
        self.register_buffer("relative_position_index", _relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _sliced_index(self, n: int) -> torch.Tensor:
        """The flat [n * n] bias-table index for an actual window volume ``n`` (cached per size and device)."""
        index = self.relative_position_index
        key = (n, index.device)
        cached = self._index_cache.get(key)
        if cached is None:
            cached = index[:n, :n].reshape(-1).contiguous()
            self._index_cache[key] = cached
        return cached

    def forward(self, x: torch.Tensor, mask: torch.Tensor | ShiftMaskGroups | None = None) -> torch.Tensor:
        """x: [B * nW, N, C]; mask -> [B * nW, N, C].

        ``mask`` is None, an additive [nW, N, N] mask (0 / -100), the integer region id of every token of every
        window [nW, N] (tokens of different regions do not attend to each other), or those region ids grouped
        by pattern (:class:`ShiftMaskGroups`, what the backbone passes to the fused path).
        """
        if self.fused:
            return self._forward_fused(x, mask)
        if isinstance(mask, ShiftMaskGroups):
            mask = mask.regions
        if mask is not None and not mask.is_floating_point():
            mask = _region_mask(mask, x.dtype)
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B * nW, nH, N, N], a fresh buffer
        # Video Swin slices the full-window index to the actual window volume (see module docstring).
        # The bias is made contiguous [nH, N, N] (as the official code does): a broadcast add of the permuted
        # view is about twice as slow on CPU. The additions are in place on the fresh logits buffer (the
        # matmul saves its inputs, not its output, for backward): same values, two [B * nW, nH, N, N]
        # allocations fewer per block (first-stage windows of a 480x480 Swin-B are ~33 MB each).
        bias = self.relative_position_bias_table[self._sliced_index(n)].view(n, n, -1).permute(2, 0, 1)
        attn = _add(attn, bias.contiguous().unsqueeze(0))
        if mask is not None:
            nw = mask.shape[0]
            attn = _add(attn.view(b_ // nw, nw, self.num_heads, n, n), mask.unsqueeze(1).unsqueeze(0))
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))

    def _forward_fused(self, x: torch.Tensor, mask: torch.Tensor | ShiftMaskGroups | None) -> torch.Tensor:
        b_, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B * nW, nH, N, hd]
        bias = self.relative_position_bias_table[self._sliced_index(n)].reshape(n, n, heads).permute(2, 0, 1)
        bias = bias.to(q.dtype)  # [nH, N, N], broadcast over windows
        # q, k, v and the mask stay 4-D: the CPU flash kernel takes [B, nH, N, hd] with a [1 | B, nH, N, N] mask
        # (5-D inputs or a 3-D mask fall back to the materialising math kernel).
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=self.scale)
        elif isinstance(mask, ShiftMaskGroups) or not mask.is_floating_point():
            groups = mask if isinstance(mask, ShiftMaskGroups) else ShiftMaskGroups.from_regions(mask)
            nw = groups.num_windows
            q, k, v = (t.reshape(b_ // nw, nw, heads, n, -1) for t in (q, k, v))
            out = q.new_empty(q.shape)
            # windows sharing a shift-mask pattern (at most 8 patterns) share one broadcast [nH, N, N] mask
            for pattern, index in zip(groups.patterns, groups.index):
                attn_mask = (bias + pattern.to(q.dtype)).unsqueeze(0)
                if index.numel() == nw:
                    out = F.scaled_dot_product_attention(
                        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=attn_mask, scale=self.scale
                    )
                    break
                qi, ki, vi = (t.index_select(1, index).flatten(0, 1) for t in (q, k, v))
                part = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=attn_mask, scale=self.scale)
                out.index_copy_(1, index, part.unflatten(0, (b_ // nw, -1)))
            out = out.reshape(b_, heads, n, -1)
        else:
            nw = mask.shape[0]
            q, k, v = (t.reshape(b_ // nw, nw, heads, n, -1) for t in (q, k, v))
            out = q.new_empty(q.shape)
            # chunks of windows keep the materialised [chunk, nH, N, N] mask small (~64 MB in fp32)
            chunk = max(1, (1 << 24) // (heads * n * n))
            for s in range(0, nw, chunk):
                e = min(nw, s + chunk)
                attn_mask = (bias + mask[s:e].to(q.dtype).unsqueeze(1)).repeat(b_ // nw, 1, 1, 1)
                qc, kc, vc = (t[:, s:e].flatten(0, 1) for t in (q, k, v))
                part = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=attn_mask, scale=self.scale)
                out[:, s:e] = part.unflatten(0, (b_ // nw, -1))
            out = out.reshape(b_, heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


class ShiftMaskGroups:
    """The shift mask of one window geometry, grouped by pattern, for the fused attention path.

    After the cyclic shift every window sees one of at most 8 region patterns (interior windows: a single
    region, i.e. no mask). ``patterns`` [K, N, N] holds each pattern's additive mask (0 / -100) and ``index[k]``
    the windows that have pattern ``k``; ``regions`` [nW, N] are the per-token region ids.
    """

    def __init__(self, regions: torch.Tensor) -> None:
        self.regions = regions
        self.num_windows = regions.shape[0]
        unique, inverse = torch.unique(regions, dim=0, return_inverse=True)
        self.patterns = _region_mask(unique, torch.float32)
        self.index = [torch.nonzero(inverse == i).flatten() for i in range(unique.shape[0])]

    @classmethod
    def from_regions(cls, regions: torch.Tensor) -> ShiftMaskGroups:
        return cls(regions)

    @property
    def shape(self) -> torch.Size:
        return self.regions.shape


def _region_mask(regions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Region ids [nW, N] -> additive mask [nW, N, N]: 0 within a region, -100 across (as the official mask)."""
    different = regions.unsqueeze(1) != regions.unsqueeze(2)
    return different.to(dtype) * -100.0


def shifted_window_regions(padded: Triple, window: Triple, shift: Triple, device: torch.device) -> torch.Tensor:
    """Region id [nW, N] of every token of every window after the cyclic shift (int16).

    ``_region_mask(shifted_window_regions(...))`` equals :func:`shifted_window_mask`.
    """
    img_mask = torch.zeros((1, *padded, 1), device=device, dtype=torch.int16)
    region = 0
    slices = [(slice(-window[i]), slice(-window[i], -shift[i]), slice(-shift[i], None)) for i in range(3)]
    for sd in slices[0]:
        for sh in slices[1]:
            for sw in slices[2]:
                img_mask[:, sd, sh, sw, :] = region
                region += 1
    return window_partition(img_mask, window).squeeze(-1)


class SwinMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, on [B, D, H, W, C]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Triple,
        shifted: bool,
        mlp_ratio: float,
        drop_path: float,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, fused=fused)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def _attention(self, x: torch.Tensor, window: Triple, shift: Triple, mask: torch.Tensor | None) -> torch.Tensor:
        b, d, h, w, c = x.shape
        x = self.norm1(x)
        # pad to window multiples first, then shift (the order matters for the released weights)
        pads = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((d, h, w))]
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        _, dp, hp, wp, _ = x.shape
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        else:
            mask = None
        windows = self.attn(window_partition(x, window), mask=mask)
        x = window_reverse(windows.view(-1, *window, c), window, b, dp, hp, wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w, :].contiguous() if any(pads) else x

    def forward(self, x: torch.Tensor, window: Triple, shift: Triple, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, D, H, W, C]; ``shift`` is the stage's shift, used only by the shifted blocks."""
        shift = shift if self.shifted else (0, 0, 0)
        x = x + self.drop_path(self._attention(x, window, shift, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial merging: [B, D, H, W, C] -> [B, D, ceil(H/2), ceil(W/2), 2C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Triple,
        mlp_ratio: float,
        drop_path: Sequence[float],
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim, num_heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=drop_path[i], fused=fused
            )
            for i in range(depth)
        )


class _PatchEmbed(nn.Module):
    """Non-overlapping patch projection (Conv3d 1xPxP for video, Conv2d PxP for images) and its LayerNorm."""

    def __init__(self, embed_dim: int, patch_size: int, video: bool) -> None:
        super().__init__()
        self.proj: nn.Conv2d | nn.Conv3d
        if video:
            kernel = (1, patch_size, patch_size)
            self.proj = nn.Conv3d(3, embed_dim, kernel_size=kernel, stride=kernel)
        else:
            self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)


class SwinBackbone(nn.Module):
    """Swin (``video=False``) or Video Swin (``video=True``) returning four maps at strides 4, 8, 16, 32.

    Parameter names: ``patch_embed.{proj,norm}``, ``layers.S.blocks.B.{norm1,attn,norm2,mlp}``,
    ``downsamples.S`` (S = 0..2) and, for 2-D Swin, ``out_norms.S`` (S = 0..3).
    """

    def __init__(
        self,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        *,
        video: bool,
        window: Sequence[int] = (1, 7, 7),
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        gradient_checkpointing: bool = False,
        fused_attention: bool = False,
        output_norms: bool | None = None,
    ) -> None:
        super().__init__()
        self.video = video
        # fused_attention: SDPA window attention with region-id shift masks (less memory, same math up to
        # rounding); False keeps the eager reference path.
        self.fused_attention = fused_attention
        self._mask_cache: dict[tuple[Any, ...], ShiftMaskGroups] = {}
        self.window: Triple = tuple(int(v) for v in window)  # type: ignore[assignment]
        self.shift: Triple = tuple(v // 2 for v in self.window)  # type: ignore[assignment]
        self.patch_size = patch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = _PatchEmbed(embed_dim, patch_size, video)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.num_channels = [embed_dim * 2**i for i in range(len(depths))]
        self.strides = [patch_size * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            dim = self.num_channels[i]
            self.layers.append(
                SwinStage(
                    dim,
                    depth,
                    num_heads[i],
                    self.window,
                    mlp_ratio,
                    rates[start : start + depth],
                    fused=fused_attention,
                )
            )
            start += depth
            if i < len(depths) - 1:
                self.downsamples.append(PatchMerging(dim))
        # per-stage output LayerNorms: 2-D Swin-Det has them, Video Swin not (unless asked, e.g. by LAVT)
        with_norms = not video if output_norms is None else output_norms
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.num_channels) if with_norms else None

    def _shift_mask(
        self, padded: Triple, window: Triple, shift: Triple, x: torch.Tensor
    ) -> torch.Tensor | ShiftMaskGroups:
        """The shift mask of one geometry: for the fused path its :class:`ShiftMaskGroups` (cached, a few
        entries); otherwise the additive [nW, N, N] mask (not cached: it can take hundreds of MB)."""
        if not self.fused_attention:
            return shifted_window_mask(padded, window, shift, x.device).to(x.dtype)
        key = (padded, window, shift, x.device)
        regions = self._mask_cache.get(key)
        if regions is None:
            if len(self._mask_cache) >= 16:
                self._mask_cache.clear()
            regions = ShiftMaskGroups(shifted_window_regions(padded, window, shift, x.device))
            self._mask_cache[key] = regions
        return regions

    def _embed(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        if self.video:
            n = x.shape[0]
            # [(b t), 3, H, W] -> [b, 3, t, H, W]
            x = x.view(n // num_frames, num_frames, *x.shape[1:]).transpose(1, 2)
            x = self.patch_embed.proj(x).permute(0, 2, 3, 4, 1)  # [b, t, h, w, C]
        else:
            x = self.patch_embed.proj(x).permute(0, 2, 3, 1).unsqueeze(1)  # [N, 1, h, w, C]
        return self.patch_embed.norm(x)

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int = 1,
        stage_fn: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """x: [(b t), 3, H, W] frames (clip-major) -> four maps [(b t), C_i, h_i, w_i].

        ``stage_fn(i, x)`` (optional) runs after the blocks of stage ``i`` on its tokens ``x`` [b, d, h, w, C_i] and
        returns ``(x_next, out)``: ``x_next`` goes on to patch merging / the next stage and ``out`` (same shape)
        is the stage's output (normed by ``out_norms`` when there are any). LAVT fuses language here. Without
        it both are the blocks' output.
        """
        x = self._embed(x, num_frames)
        outs = []
        for i, stage in enumerate(self.layers):
            _, d, h, w, _ = x.shape
            window, shift = effective_window((d, h, w), self.window, self.shift, clamp=self.video)
            padded = tuple(int(math.ceil(s / win)) * win for s, win in zip((d, h, w), window))
            mask = self._shift_mask(padded, window, shift, x) if any(shift) else None  # type: ignore[arg-type]
            for block in cast(SwinStage, stage).blocks:
                if self.gradient_checkpointing and self.training and x.requires_grad:
                    x = checkpoint(block, x, window, shift, mask, use_reentrant=False)
                else:
                    x = block(x, window, shift, mask)
            out = x
            if stage_fn is not None:
                x, out = stage_fn(i, x)
            out = out if self.out_norms is None else self.out_norms[i](out)
            # [b, d, h, w, C] -> [(b d), C, h, w]
            outs.append(out.flatten(0, 1).permute(0, 3, 1, 2).contiguous())
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outs

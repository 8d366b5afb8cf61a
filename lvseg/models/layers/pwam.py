"""LAVT's language-fusion blocks: pixel-word attention (PWAM), the language gate and the simple decoder.

LAVT (Yang et al., "LAVT: Language-Aware Vision Transformer for Referring Image Segmentation", CVPR 2022)
fuses the expression into every stage of a Swin backbone:

* :class:`PWAM` (pixel-word attention module): each pixel attends over the words (one head by default) and the
  attended language feature multiplies a projection of the pixel; the product is projected again. Its output
  ``F_i`` [B, HW, C] is what the decoder reads (after the backbone's LayerNorm of that stage).
* :class:`LanguageGate`: ``x <- x + gate(F_i) * F_i`` with ``gate = tanh(W2 relu(W1 F_i))`` (no biases), the
  residual update passed on to the next stage.
* :class:`SimpleDecoder`: three top-down fuse steps (bilinear ``align_corners=True`` upsampling, concatenation,
  two 3x3 conv + BN + ReLU) and a 1x1 conv to 2 classes (background, referred object) at stride 4.

Numerical facts the released weights depend on (all reproduced here): 1x1 ``Conv1d`` projections on [B, C, HW];
InstanceNorm (no affine, eps 1e-5) over the pixel axis after the query and output projections; keys and values
multiplied by the word mask and ``1e4 * mask - 1e4`` added to the logits; logits scaled by
``key_channels ** -0.5`` (all key channels, whatever the head count); GELU (erf) after the projections.

Parameter names follow the official state dict (``vis_project.0``, ``image_lang_att.f_query.0``, ...), so a
converted checkpoint maps one to one. The video model's 3-D variants build on :class:`SpatialLanguageAttention`'s
word masking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PWAM", "SpatialLanguageAttention", "LanguageGate", "SimpleDecoder", "masked_word_attention"]


def masked_word_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, word_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Pixel-to-word attention with LAVT's masking and scaling.

    Args:
        query: [B, Ck, P] pixel queries (P pixels, already normalised).
        key: [B, Ck, N] word keys, value: [B, Cv, N] word values (both already multiplied by the mask).
        word_mask: [B, N] 1 for real tokens, 0 for padding (float).
        num_heads: heads; the logits are scaled by ``Ck ** -0.5`` whatever the head count (official).

    Returns:
        [B, Cv, P] attended word features per pixel.
    """
    b, ck, p = query.shape
    n, cv = key.shape[-1], value.shape[1]
    q = query.reshape(b, num_heads, ck // num_heads, p).transpose(-1, -2)  # [B, h, P, ck/h]
    k = key.reshape(b, num_heads, ck // num_heads, n)  # [B, h, ck/h, N]
    v = value.reshape(b, num_heads, cv // num_heads, n)  # [B, h, cv/h, N]
    logits = (q @ k) * ck**-0.5  # [B, h, P, N]
    logits = logits + (1e4 * word_mask[:, None, None, :] - 1e4)
    attn = logits.softmax(dim=-1)
    out = attn @ v.transpose(-1, -2)  # [B, h, P, cv/h]
    # heads back to channels in (head, channel) order
    return out.permute(0, 1, 3, 2).reshape(b, cv, p)


class SpatialLanguageAttention(nn.Module):
    """Pixels attend over words: query from pixels (1x1 conv + InstanceNorm), key/value from words, output
    projection (1x1 conv + InstanceNorm). Names: ``f_query.0``, ``f_key.0``, ``f_value.0``, ``W.0``."""

    def __init__(
        self, visual_dim: int, text_dim: int, key_dim: int, value_dim: int, out_dim: int, num_heads: int = 1
    ) -> None:
        super().__init__()
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"key {key_dim} and value {value_dim} channels must be multiples of {num_heads} heads")
        self.num_heads = num_heads
        self.f_query = nn.Sequential(nn.Conv1d(visual_dim, key_dim, 1), nn.InstanceNorm1d(key_dim))
        self.f_key = nn.Sequential(nn.Conv1d(text_dim, key_dim, 1))
        self.f_value = nn.Sequential(nn.Conv1d(text_dim, value_dim, 1))
        self.W = nn.Sequential(nn.Conv1d(value_dim, out_dim, 1), nn.InstanceNorm1d(out_dim))

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, P] pixels; words: [B, Ct, N]; word_mask: [B, N] (1 = token) -> [B, C_out, P]."""
        mask = word_mask.to(words.dtype)
        query = self.f_query(x)
        key = self.f_key(words) * mask[:, None, :]
        value = self.f_value(words) * mask[:, None, :]
        return self.W(masked_word_attention(query, key, value, mask, self.num_heads))


class PWAM(nn.Module):
    """Pixel-word attention module: ``project_mm(vis_project(x) * attend(x, words))`` on [B, HW, C] tokens."""

    def __init__(self, dim: int, text_dim: int = 768, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = SpatialLanguageAttention(dim, text_dim, dim, dim, dim, num_heads)
        self.project_mm = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, HW, C] pixel tokens; words: [B, Ct, N] word features; word_mask: [B, N] -> F [B, HW, C]."""
        pixels = x.transpose(1, 2)  # [B, C, HW]
        vis = self.vis_project(pixels)
        lang = self.image_lang_att(pixels, words, word_mask)
        return self.project_mm(vis * lang).transpose(1, 2)


class LanguageGate(nn.Module):
    """``tanh(W2 relu(W1 f))`` element-wise gate on the fused feature (names ``res_gate.0``, ``res_gate.2``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_gate = nn.Sequential(
            nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh()
        )

    def forward(self, x: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """x, fused: [..., C] -> ``x + gate(fused) * fused``."""
        return x + self.res_gate(fused) * fused


def _conv_bn_relu(in_dim: int, out_dim: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False), nn.BatchNorm2d(out_dim)


class SimpleDecoder(nn.Module):
    """LAVT's ``SimpleDecoding``: stride-32/16/8/4 maps of C4, C4/2, C4/4, C4/8 channels -> [B, 2, h4, w4] logits.

    ``hidden = C4 / 2``. Step names (official): ``conv1_4, bn1_4, conv2_4, bn2_4`` (C4 + C3), ``*_3`` (+ C2),
    ``*_2`` (+ C1), then ``conv1_1`` (1x1 to 2 classes, with bias).
    """

    def __init__(self, c4_dim: int, factor: int = 2) -> None:
        super().__init__()
        hidden = c4_dim // factor
        c3, c2, c1 = c4_dim // factor, c4_dim // factor**2, c4_dim // factor**3
        self.conv1_4, self.bn1_4 = _conv_bn_relu(c4_dim + c3, hidden)
        self.conv2_4, self.bn2_4 = _conv_bn_relu(hidden, hidden)
        self.conv1_3, self.bn1_3 = _conv_bn_relu(hidden + c2, hidden)
        self.conv2_3, self.bn2_3 = _conv_bn_relu(hidden, hidden)
        self.conv1_2, self.bn1_2 = _conv_bn_relu(hidden + c1, hidden)
        self.conv2_2, self.bn2_2 = _conv_bn_relu(hidden, hidden)
        self.conv1_1 = nn.Conv2d(hidden, 2, 1)

    @staticmethod
    def _up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Bilinear (align_corners=True) upsampling of ``x`` to ``ref``'s size when it is smaller in H or W."""
        if x.shape[-2] < ref.shape[-2] or x.shape[-1] < ref.shape[-1]:
            return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)
        return x

    def _fuse(self, x: torch.Tensor, skip: torch.Tensor, level: int) -> torch.Tensor:
        x = torch.cat([self._up_to(x, skip), skip], dim=1)
        x = F.relu(getattr(self, f"bn1_{level}")(getattr(self, f"conv1_{level}")(x)))
        return F.relu(getattr(self, f"bn2_{level}")(getattr(self, f"conv2_{level}")(x)))

    def forward(self, c4: torch.Tensor, c3: torch.Tensor, c2: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        """c4..c1: [B, C_i, h_i, w_i] (strides 32..4) -> class logits [B, 2, h1, w1] (index 1 = referred)."""
        x = self._fuse(c4, c3, 4)
        x = self._fuse(x, c2, 3)
        x = self._fuse(x, c1, 2)
        return self.conv1_1(x)

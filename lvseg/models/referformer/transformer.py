"""ReferFormer's deformable transformer: Deformable-DETR encoder + a decoder whose queries are the sentence.

Frames are the batch dimension here (``N = b * t``): encoder and decoder are purely per frame.
Iterative box refinement is always on (every released ReferFormer model uses it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import MSDeformAttn

__all__ = ["DeformableTransformer", "inverse_sigmoid"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps (Deformable-DETR)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class EncoderLayer(nn.Module):
    """Post-norm: deformable self-attention -> add & norm1 -> FFN -> add & norm2."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """src, pos: [N, S, C]; reference_points: [N, S, L, 2] -> [N, S, C]."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))  # in place: the [N, S, d_ffn]
        # activation is the largest tensor of the layer, and a second one costs page faults, not just memory
        return self.norm2(src + self.dropout3(ffn))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention -> norm2 -> deformable cross-attention -> norm1 -> FFN -> norm3."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        self.fused_attention = fused_attention
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """tgt, query_pos: [N, Q, C]; reference_points: [N, Q, L, 2|4]; memory: [N, S, C] -> [N, Q, C]."""
        q = (tgt + query_pos).transpose(0, 1)
        attn = self.self_attn(q, q, tgt.transpose(0, 1), need_weights=not self.fused_attention)[0]
        attn = attn.transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attn))
        attn = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt), inplace=True)))
        return self.norm3(tgt + self.dropout4(ffn))


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class Decoder(nn.Module):
    def __init__(self, layers: list[DecoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


def _valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """mask: [N, H, W] (True = padding) -> [N, 2] fraction of valid columns (w) and rows (h)."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def _cell_centres(h: int, w: int, valid_ratio: torch.Tensor) -> torch.Tensor:
    """Centres of the cells of one ``h x w`` level, (x, y) normalised by the valid area.

    valid_ratio: [N, 2] (w, h) fraction of the level that is not padding -> [N, h * w, 2] float32."""
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=valid_ratio.device),
        torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=valid_ratio.device),
        indexing="ij",
    )
    ref_y = ref_y.reshape(-1)[None] / (valid_ratio[:, None, 1] * h)
    ref_x = ref_x.reshape(-1)[None] / (valid_ratio[:, None, 0] * w)
    return torch.stack((ref_x, ref_y), -1)


def _encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level normalised by the valid area -> [N, S, L, 2]."""
    refs = [_cell_centres(h, w, valid_ratios[:, lvl]) for lvl, (h, w) in enumerate(spatial_shapes)]
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


class DeformableTransformer(nn.Module):
    """Encoder over the multi-level fused features, decoder over sentence-conditioned queries."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        fused_attention: bool = False,
        query_reference: str = "learned",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.query_reference = query_reference
        self.num_feature_levels = num_feature_levels
        self.encoder = Encoder(
            [
                EncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
                for _ in range(num_encoder_layers)
            ]
        )
        self.decoder = Decoder(
            [
                DecoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points, fused_attention
                )
                for _ in range(num_decoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if query_reference == "learned":
            self.reference_points = nn.Linear(d_model, 2)
        else:
            # initial reference point = soft-argmax of query . memory over the finest encoder level
            self.reference_query = nn.Linear(d_model, d_model)
            self.reference_key = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn) and hasattr(m, "_reset_parameters"):
                m._reset_parameters()
        if self.query_reference == "learned":
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def _text_reference(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        shape: tuple[int, int],
        mask_flat: torch.Tensor,
        valid_ratios: torch.Tensor,
    ) -> torch.Tensor:
        """Soft-argmax reference points: where each (sentence-conditioned) query attends on the first level.

        query: [N, Q, C]; memory: [N, S, C] (the first level's ``h * w`` positions come first); mask_flat: [N, S]
        (True = padding) -> [N, Q, 2] (x, y) normalised by the valid area, like the learned reference points.
        """
        h, w = shape
        keys = self.reference_key(memory[:, : h * w])  # [N, hw, C]
        logits = torch.einsum("nqc,nsc->nqs", self.reference_query(query), keys) / math.sqrt(self.d_model)
        logits = logits.float().masked_fill(mask_flat[:, None, : h * w], float("-inf"))
        weights = logits.softmax(-1).to(memory.dtype)
        cells = _cell_centres(h, w, valid_ratios[:, 0]).to(memory.dtype)  # [N, hw, 2]
        return torch.einsum("nqs,nsk->nqk", weights, cells).clamp(1e-4, 1 - 1e-4)

    def forward(
        self,
        srcs: list[torch.Tensor],
        masks: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        tgt: torch.Tensor,
        query_embed: torch.Tensor,
        bbox_embed: nn.ModuleList,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Run encoder and decoder.

        Args:
            srcs, pos_embeds: per level [N, C, H_l, W_l]; masks: per level bool [N, H_l, W_l] (True = padding).
            tgt: [N, Q, C] decoder content queries (the sentence feature); query_embed: [Q, C] positional part.
            bbox_embed: one box MLP per decoder layer (iterative refinement).

        Returns:
            ``hs`` [layers, N, Q, C]; ``init_reference`` [N, Q, 2]; ``boxes`` [layers, N, Q, 4] (refined boxes
            with gradient, sigmoid space, = the box predictions); ``memory_maps`` the encoder output of the first
            ``L - 1`` levels as [N, C, H_l, W_l]; ``references`` [layers, N, Q, 4] the detached refined boxes.
        """
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)], 1
        )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([_valid_ratio(m) for m in masks], 1)  # [N, L, 2]

        memory = src_flat
        enc_refs = _encoder_reference_points(shapes, valid_ratios).to(src_flat.dtype)
        for layer in self.encoder.layers:
            memory = layer(memory, pos_flat, enc_refs, spatial_shapes, level_start_index, mask_flat)

        n = memory.shape[0]
        query_pos = query_embed.unsqueeze(0).expand(n, -1, -1)
        if self.query_reference == "text":
            reference = self._text_reference(tgt + query_pos, memory, shapes[0], mask_flat, valid_ratios)
        else:
            reference = self.reference_points(query_pos).sigmoid()  # [N, Q, 2]
        init_reference = reference
        output = tgt
        hs, boxes, references = [], [], []
        vr = valid_ratios.to(src_flat.dtype)
        for lid, layer in enumerate(self.decoder.layers):
            if reference.shape[-1] == 4:
                ref_input = reference[:, :, None] * torch.cat([vr, vr], -1)[:, None]
            else:
                ref_input = reference[:, :, None] * vr[:, None]
            output = layer(output, query_pos, ref_input, memory, spatial_shapes, level_start_index, mask_flat)
            delta = bbox_embed[lid](output)
            if reference.shape[-1] == 4:
                new_reference = (delta + inverse_sigmoid(reference)).sigmoid()
            else:
                new_reference = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
            hs.append(output)
            boxes.append(new_reference)
            reference = new_reference.detach()
            references.append(reference)

        memory_maps = []
        start = 0
        for h, w in shapes[:-1]:
            # [N, C, h, w] view with channels-last strides: the FPN's convolutions (oneDNN) prefer that layout, and
            # its token rearranges become views instead of copies
            memory_maps.append(memory[:, start : start + h * w].reshape(n, h, w, -1).permute(0, 3, 1, 2))
            start += h * w
        return torch.stack(hs), init_reference, torch.stack(boxes), memory_maps, torch.stack(references)

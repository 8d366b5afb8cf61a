"""MTTR (Botach et al., "End-to-End Referring Video Object Segmentation with Multimodal Transformers", CVPR 2022).

Re-implementation of mttr2021/MTTR (commit 2cc35ab, code as of 472bf89) with the official parameter names, so
converted checkpoints load strictly. Shapes: ``b`` videos (one per expression), ``t`` frames, ``q`` object
queries, ``L`` decoder layers, ``d`` = ``d_model``, ``S`` text tokens; stage maps at strides 4, 8 and 16.

Data flow: Video Swin-T (patch 1x4x4, three stages, no temporal downsampling) -> per frame, the stride-16 map
(1x1 conv to ``d``) and the expression's RoBERTa tokens form one multimodal sequence for a post-norm DETR
encoder; the decoder's ``q`` learned queries (shared by every frame) attend to it; an FPN-like decoder upsamples
the encoder's video memory with the stride-8 and stride-4 backbone maps to an 8-channel map per frame, and each
query's kernel (MLP) dotted with that map gives its mask; a linear head says whether a query is the referred one
(softmax index 0 = referred). Query ``n`` in every frame is the same object, so a clip's answer is one query.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InvalidInputError, InvalidTextError
from ..base import RVOSModel, check_clip_frames, validate_texts
from ..layers.mlp import MLP
from ..layers.position_encoding import PositionEmbeddingSine2D
from ..layers.swin import SwinBackbone, WindowAttention3D
from ..layers.text import build_roberta
from .config import PROTOCOLS, MTTRConfig

__all__ = ["MTTR", "MTTRConfig", "MTTRWindowState", "a2d_window_indices", "postprocess_masks"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- transformer
class EncoderLayer(nn.Module):
    """Post-norm DETR encoder layer; queries and keys carry the position encoding, values do not.

    ``fused``: PyTorch's fused attention kernels (``need_weights=False``); otherwise ``nn.MultiheadAttention``'s
    explicit ``softmax(q k^T) v`` (it materialises the weights), which is what the official code runs: the same
    operations in the same order, so the eager model reproduces it bit for bit (the fused kernels only up to
    rounding).
    """

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos: [N, B, d] (sequence first); key_padding_mask: bool [B, N] -> [N, B, d]."""
        qk = src + pos
        attended = self.self_attn(qk, qk, src, key_padding_mask=key_padding_mask, need_weights=not self.fused)[0]
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: query self-attention, cross-attention to the multimodal memory, FFN.

    ``fused`` as in :class:`EncoderLayer`.
    """

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, nheads, dropout=dropout)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        memory_key_padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """tgt, query_pos: [q, B, d]; memory, pos: [N, B, d]; mask: bool [B, N] -> [q, B, d]."""
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt, need_weights=not self.fused)[0]))
        attended = self.multihead_attn(
            tgt + query_pos,
            memory + pos,
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=not self.fused,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, d: int, nheads: int, ffn: int, dropout: float, fused: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, nheads, ffn, dropout, fused) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:  # no final norm (post-norm layers)
            src = layer(src, pos, key_padding_mask)
        return src


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d: int, nheads: int, ffn: int, dropout: float, fused: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d, nheads, ffn, dropout, fused) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        memory_key_padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """-> [L, q, B, d]: every layer's output through the shared final LayerNorm."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_key_padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class FeatureResizer(nn.Module):
    """Linear -> LayerNorm(eps 1e-12) -> Dropout: RoBERTa features (768) to ``d_model``."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim)
        self.layer_norm = nn.LayerNorm(output_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))


class MultimodalTransformer(nn.Module):
    """Per-frame multimodal DETR: [frame tokens ; expression tokens] -> encoder; shared queries -> decoder."""

    def __init__(self, cfg: MTTRConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model = d
        sizes = (d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.fused_attention)
        self.encoder = TransformerEncoder(cfg.num_encoder_layers, *sizes)
        self.decoder = TransformerDecoder(cfg.num_decoder_layers, *sizes)
        for p in self.parameters():  # official init, applied before the text parts exist
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.text_encoder = build_roberta(cfg.text_encoder, add_pooling_layer=False)
        if cfg.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.txt_proj = FeatureResizer(int(cfg.text_encoder.get("hidden_size", 768)), d, cfg.dropout)

    def forward(
        self,
        vid: torch.Tensor,
        vid_pad: torch.Tensor,
        pos: torch.Tensor,
        txt: torch.Tensor,
        txt_pad: torch.Tensor,
        queries: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and decode every frame as its own sequence.

        Args:
            vid: [(b t), d, h, w] projected stride-16 features; vid_pad: bool [(b t), h, w] (True = padding);
            pos: [(b t), d, h, w] 2-D sine encoding; txt: [(b t), S, d] projected text tokens of each frame's
            expression; txt_pad: bool [(b t), S]; queries: [q, d] learned query embeddings.

        Returns:
            hs [L, (b t), q, d] and the encoded video memory [(b t), d, h, w].
        """
        n, d, h, w = vid.shape
        src = torch.cat((vid.flatten(2).permute(2, 0, 1), txt.transpose(0, 1)), 0)  # [(h w) + S, (b t), d]
        pos_seq = torch.cat((pos.flatten(2).permute(2, 0, 1), pos.new_zeros(txt.shape[1], n, d)), 0)
        key_pad = torch.cat((vid_pad.flatten(1), txt_pad), 1)  # [(b t), (h w) + S]
        memory = self.encoder(src, pos_seq, key_pad)
        query_pos = queries.unsqueeze(1).expand(-1, n, -1)
        hs = self.decoder(torch.zeros_like(query_pos), memory, pos_seq, query_pos, key_pad)  # [L, q, (b t), d]
        vid_memory = memory[: h * w].permute(1, 2, 0).reshape(n, d, h, w)
        return hs.transpose(1, 2), vid_memory


# ---------------------------------------------------------------------------------------- spatial decoder
class FPNSpatialDecoder(nn.Module):
    """FPN-like decoder: stride-16 memory + stride-8 and stride-4 backbone maps -> ``out_dim`` channels at s4."""

    def __init__(self, context_dim: int, fpn_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        inter = [context_dim, context_dim // 2, context_dim // 4, context_dim // 8]
        self.lay1 = nn.Conv2d(context_dim, inter[0], 3, padding=1)
        self.gn1 = nn.GroupNorm(8, inter[0])
        self.lay2 = nn.Conv2d(inter[0], inter[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter[1])
        self.lay3 = nn.Conv2d(inter[1], inter[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter[2])
        self.lay4 = nn.Conv2d(inter[2], inter[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter[3])
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter[2], 1)
        self.out_lay = nn.Conv2d(inter[3], out_dim, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, stride8: torch.Tensor, stride4: torch.Tensor) -> torch.Tensor:
        """x: [N, d, h16, w16]; stride8: [N, C2, h8, w8]; stride4: [N, C1, h4, w4] -> [N, out_dim, h4, w4]."""
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        lateral = self.adapter1(stride8)
        x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
        x = F.relu(self.gn3(self.lay3(x)))
        lateral = self.adapter2(stride4)
        x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
        x = F.relu(self.gn4(self.lay4(x)))
        return self.out_lay(x)


# -------------------------------------------------------------------------------------------- helpers
@dataclass
class MTTRWindowState:
    """What :meth:`MTTR.segment_window` carries from one window to the next.

    ``score_sums`` [b, q]: each query's referred probability summed over every frame seen so far;
    ``frames``: how many frames that is; ``query`` [b]: the query chosen for the last window.
    """

    score_sums: torch.Tensor
    frames: int
    query: torch.Tensor


def a2d_window_indices(annotated: int, num_frames: int, window: int, one_based: bool = True) -> list[int]:
    """0-based frame indices of the A2D/JHMDB-Sentences window centred on the annotated frame.

    The window is ``[f - window // 2, f + (window + 1) // 2)`` around the 0-based annotated frame ``f``, with
    out-of-range indices clamped to the first/last frame (edge frames repeat). The annotated frame is at
    position ``window // 2``. A2D names frames from 1 (``one_based=True``); JHMDB's ``c`` is passed as is.
    """
    if window < 1 or num_frames < 1:
        raise InvalidInputError(f"need window >= 1 and num_frames >= 1, got {window} and {num_frames}")
    f = annotated - 1 if one_based else annotated
    if not 0 <= f < num_frames:
        raise InvalidInputError(f"annotated frame {annotated} is outside a video of {num_frames} frames")
    return [min(max(i, 0), num_frames - 1) for i in range(f - window // 2, f + (window + 1) // 2)]


def postprocess_masks(
    mask_logits: torch.Tensor,
    input_size: tuple[int, int],
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> torch.Tensor:
    """The official post-processing: logits at stride 4 -> bool masks at the original frame size.

    Bilinear upsampling (align_corners=False) to the model input size (``input_size``, padding included),
    ``sigmoid > 0.5``, crop to the resized frame without padding (``resized_size``), nearest resize to
    ``original_size``. mask_logits: [N, h, w] (any number of masks) -> bool [N, H_orig, W_orig].
    """
    if mask_logits.dim() != 3:
        raise InvalidInputError(f"mask_logits must be [N, h, w], got {tuple(mask_logits.shape)}")
    x = F.interpolate(mask_logits.float().unsqueeze(0), size=tuple(input_size), mode="bilinear", align_corners=False)[0]
    x = (x.sigmoid() > 0.5)[:, : resized_size[0], : resized_size[1]]
    return F.interpolate(x.unsqueeze(1).float(), size=tuple(original_size), mode="nearest")[:, 0].bool()


# -------------------------------------------------------------------------------------------------- model
class MTTR(RVOSModel):
    """MTTR: Video Swin-T + RoBERTa + per-frame multimodal DETR with dynamic mask kernels.

    ``forward`` gives the raw outputs of every query and decoder layer; ``segment`` applies an official
    inference protocol; ``segment_window`` follows one object across the windows of the demo pipeline.
    """

    config_class = MTTRConfig
    architecture = "mttr"
    config: MTTRConfig

    def __init__(self, config: MTTRConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        cfg = config
        d = cfg.d_model
        self.tokenizer = tokenizer
        self.backbone = SwinBackbone(
            cfg.embed_dim,
            cfg.depths,
            cfg.num_heads,
            video=True,
            window=cfg.swin_window,
            drop_path_rate=cfg.drop_path_rate,
            fused_attention=cfg.fused_attention,
        )
        channels = self.backbone.num_channels  # e.g. [96, 192, 384]
        self.transformer = MultimodalTransformer(cfg)
        self.is_referred_head = nn.Linear(d, 2)
        self.instance_kernels_head = MLP(d, d, cfg.mask_kernels_dim, 2)
        self.obj_queries = nn.Embedding(cfg.num_queries, d)
        self.vid_embed_proj = nn.Conv2d(channels[-1], d, kernel_size=1)
        self.spatial_decoder = FPNSpatialDecoder(d, (channels[1], channels[0]), cfg.mask_kernels_dim)
        self.position_embedding = PositionEmbeddingSine2D(d // 2, normalize=True, offset=0.0)

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every attention of the model (Video Swin windows, encoder, decoder) between the fused kernels
        and the eager path that reproduces the official computation bit for bit; ``config.fused_attention``
        follows. The weights are untouched."""
        self.config.fused_attention = bool(fused)
        self.backbone.fused_attention = bool(fused)
        self.backbone._mask_cache.clear()
        for module in self.modules():
            if isinstance(module, (WindowAttention3D, EncoderLayer, DecoderLayer)):
                module.fused = bool(fused)

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Run the block with the eager attention (the official computation), then restore the previous
        setting; what the official evaluation pipelines (lvseg.metrics.pipeline_mttr) use."""
        before = self.config.fused_attention
        self.set_fused_attention(False)
        try:
            yield
        finally:
            self.set_fused_attention(before)

    # -------------------------------------------------------------------------------------------- inputs
    def _prepare_texts(self, text: str | Sequence[str]) -> list[str]:
        texts = validate_texts(text)
        return [t.lower() for t in texts] if self.config.lowercase_text else texts

    def _check_frames(self, frames: torch.Tensor, texts: Sequence[str]) -> None:
        check_clip_frames(frames, texts, "ImageNet mean/std")
        if frames.shape[1] < 1 or min(frames.shape[-2:]) < 16:
            raise InvalidInputError(
                f"frames of shape {tuple(frames.shape)} are too small: MTTR needs >= 1 frame of >= 16x16 pixels"
            )

    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize (padding to the longest, no truncation) and encode expressions.

        Returns projected token features [b, S, d] and the token padding mask bool [b, S] (True = padding).
        """
        if self.tokenizer is None:
            raise ConfigError(
                "this MTTR has no tokenizer: load it with lvseg.load(...) / from_pretrained, or set "
                "model.tokenizer = transformers.RobertaTokenizerFast.from_pretrained('roberta-base')"
            )
        tokens = self.tokenizer(list(texts), padding="longest", return_tensors="pt")
        limit = min(
            self.config.preprocessing.max_text_tokens,
            int(self.config.text_encoder.get("max_position_embeddings", 514)) - 2,
        )
        if tokens["input_ids"].shape[1] > limit:
            raise InvalidTextError(
                f"an expression is {tokens['input_ids'].shape[1]} tokens long, more than this model accepts "
                f"({limit}): shorten the expression"
            )
        ids = tokens["input_ids"].to(self.device)
        attention = tokens["attention_mask"].to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            hidden = self.transformer.text_encoder(input_ids=ids, attention_mask=attention).last_hidden_state
        return self.transformer.txt_proj(hidden), attention.ne(1)

    # ------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        frames: torch.Tensor,
        text: Sequence[str],
        padding_mask: torch.Tensor | None = None,
        valid_indices: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Raw outputs of every query (what the training losses use).

        Args:
            frames: normalised frames [b, t, 3, H, W] (one clip per expression).
            text: ``b`` expressions.
            padding_mask: optional bool [b, t, H, W], True on padded pixels (batched clips of different sizes).
            valid_indices: frames (same for every clip) decoded after the backbone, e.g. ``[t // 2]`` for the
                A2D/JHMDB annotated frame; the backbone still sees all ``t`` frames. Default: all frames.

        Returns:
            dict with ``pred_masks`` [b, t', q, ceil(H/4), ceil(W/4)] logits and ``pred_is_referred``
            [b, t', q, 2] logits (softmax index 0 = referred) of the last decoder layer, and ``aux_outputs``:
            the same two for the other decoder layers.
        """
        texts = self._prepare_texts(text)
        self._check_frames(frames, texts)
        return self._forward(frames, texts, padding_mask, valid_indices, all_layers=True)

    def _forward(
        self,
        frames: torch.Tensor,
        texts: list[str],
        padding_mask: torch.Tensor | None,
        valid_indices: Sequence[int] | None,
        all_layers: bool,
    ) -> dict[str, Any]:
        b, t = frames.shape[:2]
        frames = frames.to(self.dtype)
        # The Predictor passes one clip expanded for several expressions: run the backbone once.
        shared = b > 1 and frames.stride(0) == 0 and padding_mask is None
        clip = frames[:1] if shared else frames
        feats = self.backbone(clip.flatten(0, 1), t)  # 3 x [(b t), C_i, h_i, w_i]
        if valid_indices is not None:
            index = torch.as_tensor(list(valid_indices), dtype=torch.long, device=frames.device)
            if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= t:
                raise InvalidInputError(f"valid_indices {list(valid_indices)} must be frame indices in [0, {t})")
            feats = [f.unflatten(0, (-1, t)).index_select(1, index).flatten(0, 1) for f in feats]
            t_out = index.numel()
        else:
            t_out = t
        if shared:
            feats = [f.unflatten(0, (1, t_out)).expand(b, -1, -1, -1, -1).flatten(0, 1) for f in feats]
        n = b * t_out
        h16, w16 = feats[-1].shape[-2:]
        if padding_mask is None:
            pad16 = torch.zeros(n, h16, w16, dtype=torch.bool, device=frames.device)
        else:
            if padding_mask.shape != (b, t, *frames.shape[-2:]):
                raise InvalidInputError(
                    f"padding_mask must be bool [b, t, H, W] = {(b, t, *frames.shape[-2:])}, "
                    f"got {tuple(padding_mask.shape)}"
                )
            pm = padding_mask if valid_indices is None else padding_mask[:, list(valid_indices)]
            # nearest resize of the pixel padding mask to the stride-16 map (F.interpolate's default mode)
            pad16 = F.interpolate(pm.flatten(0, 1)[None].float(), size=(h16, w16))[0].bool()
        vid = self.vid_embed_proj(feats[-1])
        pos = self.position_embedding(pad16).to(vid.dtype)
        txt, txt_pad = self.encode_text(texts)  # [b, S, d], [b, S]
        txt = txt.repeat_interleave(t_out, dim=0)
        txt_pad = txt_pad.repeat_interleave(t_out, dim=0)
        hs, vid_memory = self.transformer(vid, pad16, pos, txt, txt_pad, self.obj_queries.weight)
        if not all_layers:
            hs = hs[-1:]
        decoded = self.spatial_decoder(vid_memory, feats[1], feats[0])  # [(b t), k, h4, w4]
        decoded = decoded.unflatten(0, (b, t_out))
        hs = hs.unflatten(1, (b, t_out))  # [L, b, t, q, d]
        kernels = self.instance_kernels_head(hs)  # [L, b, t, q, k]
        masks = torch.einsum("lbtqk,btkhw->lbtqhw", kernels, decoded)
        referred = self.is_referred_head(hs)  # [L, b, t, q, 2]
        out: dict[str, Any] = {"pred_masks": masks[-1], "pred_is_referred": referred[-1]}
        if all_layers:
            out["aux_outputs"] = [{"pred_masks": m, "pred_is_referred": r} for m, r in zip(masks[:-1], referred[:-1])]
        return out

    # ------------------------------------------------------------------------------------------- segment
    def _referred_probs(self, frames: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._forward(frames, texts, None, None, all_layers=False)
        probs = out["pred_is_referred"].float().softmax(-1)[..., 0]  # [b, t, q]
        return probs, out["pred_masks"]

    @staticmethod
    def _take_query(masks: torch.Tensor, probs: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """masks [b, t, q, h, w], probs [b, t, q], query [b] or [b, t] -> ([b, t, h, w], [b, t])."""
        b, t = probs.shape[:2]
        per_frame = query[:, None].expand(b, t) if query.dim() == 1 else query
        idx = per_frame[..., None, None, None].expand(b, t, 1, *masks.shape[-2:])
        return masks.gather(2, idx).squeeze(2), probs.gather(2, per_frame[..., None]).squeeze(2)

    @torch.no_grad()
    def segment(
        self, frames: torch.Tensor, text: str | Sequence[str], protocol: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The referred object's mask logits [b, t, ceil(H/4), ceil(W/4)] and scores [b, t].

        ``protocol`` (default ``config.protocol``):

        * ``"ytvos"`` (Ref-YouTube-VOS): the whole clip is one window; the query with the highest referred
          probability averaged over time gives the masks of every frame.
        * ``"frame"``: the best query of each frame on its own (the top-one rule of the A2D/JHMDB IoU metrics;
          see :meth:`segment_annotated_frame` for their exact window protocol).

        Scores are the chosen query's referred probability per frame. Foreground is ``sigmoid(logit) > 0.5``
        after a bilinear resize to the input size (see :func:`postprocess_masks`).
        """
        protocol = protocol or self.config.protocol
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown MTTR protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        texts = self._prepare_texts(text)
        self._check_frames(frames, texts)
        probs, masks = self._referred_probs(frames, texts)
        best = probs.mean(1).argmax(-1) if protocol == "ytvos" else probs.argmax(-1)
        return self._take_query(masks, probs, best)

    @torch.no_grad()
    def segment_annotated_frame(
        self, frames: torch.Tensor, text: str | Sequence[str], frame_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A2D-/JHMDB-Sentences protocol: all queries' masks and scores on the annotated frame.

        ``frames`` is the window around the annotated frame (see :func:`a2d_window_indices`); the backbone sees
        all of it and only ``frame_index`` (default: the centre, ``t // 2``) is decoded. Returns mask logits
        [b, q, ceil(H/4), ceil(W/4)] and referred probabilities [b, q]: all of them are ranked for mAP and the
        top-scoring one is used for precision@K and IoU.
        """
        texts = self._prepare_texts(text)
        self._check_frames(frames, texts)
        index = frames.shape[1] // 2 if frame_index is None else int(frame_index)
        out = self._forward(frames, texts, None, [index], all_layers=False)
        probs = out["pred_is_referred"].float().softmax(-1)[..., 0]
        return out["pred_masks"][:, 0], probs[:, 0]

    def segment_window(
        self, frames: torch.Tensor, text: Sequence[str], state: MTTRWindowState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, MTTRWindowState]:
        """Segment one window of a longer video, following one object across windows.

        MTTR's query ``n`` is the same object in every frame of a window, and the same learned query tends to
        take the same object in the next window. The official demo chose a query per window independently; here
        the query of a window is the argmax of each query's referred probability averaged over *all frames seen
        so far* (this window included), so the earlier windows' choice is kept unless the new evidence outweighs
        it. With a single window this is exactly the Ref-YouTube-VOS rule of :meth:`segment`.
        """
        texts = self._prepare_texts(text)
        self._check_frames(frames, texts)
        with torch.no_grad():
            probs, masks = self._referred_probs(frames, texts)
        sums = probs.sum(1) if state is None else state.score_sums.to(probs.device) + probs.sum(1)
        count = probs.shape[1] + (0 if state is None else state.frames)
        query = sums.argmax(-1)
        if state is not None and not torch.equal(query, state.query.to(query.device)):
            logger.debug("MTTR window linking switched query %s -> %s", state.query.tolist(), query.tolist())
        logits, scores = self._take_query(masks, probs, query)
        return logits, scores, MTTRWindowState(sums, count, query)

    def output_upsampling(self, protocol: str | None = None) -> str:
        """Both official post-processors (A2D/JHMDB and Ref-YouTube-VOS) upsample to the padded input size,
        threshold, crop the padding and resize with nearest: ``"threshold-nearest"`` (see
        :func:`postprocess_masks`)."""
        return "threshold-nearest"

    def benchmark_protocol(self, benchmark: str) -> str | None:
        """Ref-YouTube-VOS (and MeViS) are evaluated with the whole video as one window (``trainer.py``)."""
        return {"ytvos": "ytvos", "mevis": "ytvos"}.get(benchmark)

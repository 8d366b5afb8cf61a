"""ReferFormer (Wu et al., "Language as Queries for Referring Video Object Segmentation", CVPR 2022).

Re-implementation of wjn922/ReferFormer (commit 06fc218f5d8f04730f81471a15ed89ea7e4d30d8) with the same
parameter names except the backbone (see :mod:`lvseg.models.referformer.convert`). Shapes: ``b`` videos
(one per expression), ``t`` frames, ``q`` queries per frame, ``C`` = ``hidden_dim``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ...errors import ConfigError, InvalidInputError, InvalidTextError
from ..base import RVOSModel, check_clip_frames, validate_texts
from ..layers.mlp import MLP
from ..layers.position_encoding import PositionEmbeddingSine1D, PositionEmbeddingSine2D
from ..layers.resnet import ResNetBackbone
from ..layers.swin import SwinBackbone
from ..layers.text import build_roberta
from ..layers.timm_backbone import TimmBackbone
from .config import ReferFormerConfig
from .fpn import CrossModalFPN, MaskRefiner, VisionLanguageFusion
from .transformer import DeformableTransformer

__all__ = ["ReferFormer", "ReferFormerConfig"]

logger = logging.getLogger(__name__)


class FeatureResizer(nn.Module):
    """Linear -> LayerNorm(eps 1e-12) -> Dropout: text features (768) to the model width."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim)
        self.layer_norm = nn.LayerNorm(output_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))


def _build_backbone(config: ReferFormerConfig) -> TimmBackbone | ResNetBackbone | SwinBackbone:
    if config.backbone == "timm":
        return TimmBackbone(
            config.timm_model,
            temporal_kernel=config.temporal_kernel,
            gradient_checkpointing=config.gradient_checkpointing,
        )
    if config.backbone.startswith("resnet"):
        return ResNetBackbone(config.backbone, gradient_checkpointing=config.gradient_checkpointing)
    swin = config.swin
    assert swin is not None
    return SwinBackbone(
        swin.embed_dim,
        swin.depths,
        swin.num_heads,
        video=config.is_video_backbone,
        window=swin.window,
        drop_path_rate=swin.drop_path_rate,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def _concat_outputs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of :meth:`ReferFormer.forward` for several expressions run one at a time, joined on the batch."""
    out: dict[str, Any] = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "aux_outputs"}
    if "aux_outputs" in parts[0]:
        out["aux_outputs"] = [
            {key: torch.cat([p["aux_outputs"][i][key] for p in parts]) for key in layer}
            for i, layer in enumerate(parts[0]["aux_outputs"])
        ]
    return out


class ReferFormer(RVOSModel):
    """ReferFormer: the expression's sentence feature becomes the decoder queries of a Deformable-DETR; each
    query predicts a box, a score and the weights of a dynamic mask head applied to cross-modal FPN features.

    The same query index across frames is the same object, so a video's referred object is one query chosen
    from the frame-averaged scores (Ref-YouTube-VOS protocol).
    """

    config_class = ReferFormerConfig
    architecture = "referformer"
    config: ReferFormerConfig

    def __init__(self, config: ReferFormerConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        cfg = config
        d = cfg.hidden_dim
        self.tokenizer = tokenizer
        self.backbone = _build_backbone(cfg)
        if isinstance(self.backbone, ResNetBackbone):
            # oneDNN runs the ResNet's convolutions about 1.4x faster on channels-last tensors (CPU seconds,
            # benchmarks/referformer_vs_official.py); weights kept in that layout are not reordered every call
            self.backbone.to(memory_format=torch.channels_last)
        self.position_embedding = PositionEmbeddingSine2D(d // 2, normalize=True)
        channels = self.backbone.num_channels
        # stride 8, 16, 32 backbone levels -> 1x1 conv; an extra stride-64 level from the raw stride-32 map
        self.input_proj = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in channels[-3:]]
            + [nn.Sequential(nn.Conv2d(channels[-1], d, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d))]
        )
        self.transformer = DeformableTransformer(
            d_model=d,
            nhead=cfg.nheads,
            num_encoder_layers=cfg.enc_layers,
            num_decoder_layers=cfg.dec_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            num_feature_levels=cfg.num_feature_levels,
            enc_n_points=cfg.enc_n_points,
            dec_n_points=cfg.dec_n_points,
            fused_attention=cfg.fused_attention,
            query_reference=cfg.query_reference,
        )
        self.class_embed = nn.ModuleList(nn.Linear(d, cfg.num_classes) for _ in range(cfg.dec_layers))
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(cfg.dec_layers))
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.text_encoder = build_roberta(cfg.text_encoder, add_pooling_layer=cfg.sentence_pooling == "pooler")
        text_dim = int(cfg.text_encoder.get("hidden_size", 768))
        self.resizer = FeatureResizer(text_dim, d, dropout=0.1)
        self.fusion_module = VisionLanguageFusion(d, nhead=8, fused_attention=cfg.fused_attention)
        self.text_pos = PositionEmbeddingSine1D(d, normalize=True)
        self.pixel_decoder = CrossModalFPN(
            channels[0],
            conv_dim=d,
            mask_dim=cfg.mask_dim,
            dim_feedforward=cfg.dim_feedforward,
            nhead=8,
            fused_attention=cfg.fused_attention,
        )
        self.mask_refiner = MaskRefiner(cfg.mask_dim, cfg.mask_refine) if cfg.mask_refine else None
        # dynamic mask head: (mask_dim + 2 rel. coords) -> ch -> ... -> 1, all 1x1 convs, generated per query
        ch = cfg.dynamic_mask_channels
        in_ch = cfg.mask_dim + (2 if cfg.rel_coord else 0)
        self.weight_nums = [in_ch * ch] + [ch * ch] * (cfg.controller_layers - 2) + [ch]
        self.bias_nums = [ch] * (cfg.controller_layers - 1) + [1]
        self.controller = MLP(d, d, sum(self.weight_nums) + sum(self.bias_nums), 3)
        self._init_heads()

    def _init_heads(self) -> None:
        bias_value = -math.log((1 - 0.01) / 0.01)
        for head in cast(list[nn.Linear], list(self.class_embed)):
            nn.init.constant_(head.bias, bias_value)
        for i, mlp in enumerate(cast(list[MLP], list(self.bbox_embed))):
            last = cast(nn.Linear, mlp.layers[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            if i == 0:
                nn.init.constant_(last.bias[2:], -2.0)
        for proj in self.input_proj:
            conv = cast(nn.Conv2d, cast(nn.Sequential, proj)[0])
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(cast(torch.Tensor, conv.bias))
        for layer in cast(list[nn.Linear], list(self.controller.layers)):
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)

    def compile_parts(self) -> list[nn.Module]:
        """The parts ``lvseg.load(..., compile=True)`` hands to ``torch.compile``: the backbone, the deformable
        transformer and the cross-modal FPN (the text encoder, query selection and mask head stay eager)."""
        return [self.backbone, self.transformer, self.pixel_decoder]

    # ------------------------------------------------------------------------------------------------ text
    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenize and encode expressions.

        Returns word features [b, L, C], word padding mask bool [b, L] (True = padding) and sentence
        features [b, C] (RoBERTa pooler output, or the mean of the word states with
        ``sentence_pooling="mean"``), both through the shared resizer.
        """
        if self.tokenizer is None:
            raise ConfigError(
                "this ReferFormer has no tokenizer: load it with lvseg.load(...) / from_pretrained, or set "
                "model.tokenizer = transformers.RobertaTokenizerFast.from_pretrained('roberta-base')"
            )
        tokens = self.tokenizer(list(texts), padding="longest", return_tensors="pt")
        limit = self.config.preprocessing.max_text_tokens
        if tokens["input_ids"].shape[1] > limit:
            raise InvalidTextError(
                f"an expression is {tokens['input_ids'].shape[1]} tokens long, more than this model's "
                f"max_text_tokens={limit}: shorten the expression"
            )
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        encoded = self.text_encoder(**tokens)
        words = self.resizer(encoded.last_hidden_state)
        if self.config.sentence_pooling == "mean":
            keep = tokens["attention_mask"][..., None].to(encoded.last_hidden_state.dtype)
            pooled = (encoded.last_hidden_state * keep).sum(1) / keep.sum(1).clamp(min=1)
        else:
            pooled = encoded.pooler_output
        sentence = self.resizer(pooled)
        return words, tokens["attention_mask"].ne(1), sentence

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        frames: torch.Tensor,
        text: Sequence[str],
        padding_mask: torch.Tensor | None = None,
        valid_indices: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Raw outputs of every query (what the training losses use).

        Args:
            frames: normalised frames [b, t, 3, H, W] (one video per expression).
            text: ``b`` expressions.
            padding_mask: optional bool [b, t, H, W], True on padded pixels (batched videos of different sizes).
            valid_indices: optional frame index per video; only that frame is decoded after the backbone
                (A2D-Sentences / JHMDB-Sentences protocol), so the outputs have t = 1.

        Returns:
            dict with ``pred_logits`` [b, t, q, K], ``pred_boxes`` [b, t, q, 4] (cx, cy, w, h in [0, 1] of the
            unpadded frame), ``pred_masks`` [b, t, q, H/s, W/s] logits (s = ``config.mask_stride``),
            ``aux_outputs`` (the same for the other decoder layers) and ``reference_points`` [b, t, q, 2].
        """
        return self._forward(frames, text, padding_mask, valid_indices, all_layer_masks=True)

    def _check_frames(self, frames: torch.Tensor, texts: Sequence[str]) -> None:
        check_clip_frames(frames, texts)
        if min(frames.shape[-2:]) < 32:
            raise InvalidInputError(f"frames of {tuple(frames.shape[-2:])} pixels are too small; need >= 32x32")

    def _forward(
        self,
        frames: torch.Tensor,
        text: Sequence[str],
        padding_mask: torch.Tensor | None,
        valid_indices: Sequence[int] | None,
        all_layer_masks: bool,
    ) -> dict[str, Any]:
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        b, t, _, height, width = frames.shape
        samples = frames.flatten(0, 1)
        if padding_mask is None:
            pad = torch.zeros((b * t, height, width), dtype=torch.bool, device=frames.device)
        else:
            if padding_mask.shape != (b, t, height, width):
                raise InvalidInputError(
                    f"padding_mask must be bool [B, T, H, W] = {(b, t, height, width)}, got {tuple(padding_mask.shape)}"
                )
            pad = padding_mask.flatten(0, 1).bool()
        # (W, H) of the unpadded frame of each video: the dynamic mask head works in input pixels
        valid_h = (~pad.view(b, t, height, width)[:, 0, :, 0]).sum(-1)
        valid_w = (~pad.view(b, t, height, width)[:, 0, 0, :]).sum(-1)
        image_size = torch.stack([valid_w, valid_h], -1).to(frames.dtype)  # [b, 2]

        # The Predictor passes one clip expanded for several expressions (batch stride 0). The backbone never
        # sees the text, so it runs once on that clip and its features are shared by every expression.
        shared = b > 1 and frames.stride(0) == 0 and padding_mask is None
        clip = samples[:t] if shared else samples
        if isinstance(self.backbone, (SwinBackbone, TimmBackbone)) and self.backbone.video:
            feats = self.backbone(clip, num_frames=t)
        elif isinstance(self.backbone, ResNetBackbone):
            feats = self.backbone(clip.contiguous(memory_format=torch.channels_last))
        else:
            feats = self.backbone(clip)
        if shared and (valid_indices is None or len(valid_indices) == b):
            # the text-dependent part expression by expression on the shared features: batching the expressions
            # cost more than separate passes (the channels-last features of one clip are read as [(t h w), 1, C]
            # without a copy; several expressions need copies), see docs/performance.md
            parts = [
                self._heads(
                    feats,
                    pad[:t],
                    samples[:t],
                    image_size[i : i + 1],
                    [texts[i]],
                    1,
                    t,
                    False,
                    None if valid_indices is None else [valid_indices[i]],
                    all_layer_masks,
                )
                for i in range(b)
            ]
            return _concat_outputs(parts)
        return self._heads(
            feats, pad, samples, image_size, texts, b, t, padding_mask is not None, valid_indices, all_layer_masks
        )

    def _heads(
        self,
        feats: list[torch.Tensor],
        pad: torch.Tensor,
        samples: torch.Tensor,
        image_size: torch.Tensor,
        texts: Sequence[str],
        b: int,
        t: int,
        padded: bool,
        valid_indices: Sequence[int] | None,
        all_layer_masks: bool,
    ) -> dict[str, Any]:
        """Everything after the backbone: feats [(b t), C_l, H_l, W_l] per level, pad bool [(b t), H, W], samples
        [(b t), 3, H, W], image_size [b, 2] -> the outputs of :meth:`forward` for ``b`` expressions."""
        frames = samples
        masks = [F.interpolate(pad[None].float(), size=f.shape[-2:]).to(torch.bool)[0] for f in feats]
        if not padded:
            # no padding: every frame has the same mask, so one frame's sine encoding, expanded, is every frame's
            poses = [
                self.position_embedding(m[:1]).to(f.dtype).expand(m.shape[0], -1, -1, -1) for f, m in zip(feats, masks)
            ]
        else:
            poses = [self.position_embedding(m).to(f.dtype) for f, m in zip(feats, masks)]
        if valid_indices is not None:
            if len(valid_indices) != b or any(not 0 <= int(i) < t for i in valid_indices):
                raise InvalidInputError(
                    f"valid_indices needs one frame index in [0, {t}) per video, got {list(valid_indices)}"
                )
            keep = torch.tensor([i * t + int(v) for i, v in enumerate(valid_indices)], device=frames.device)
            feats = [f.index_select(0, keep) for f in feats]
            masks = [m.index_select(0, keep) for m in masks]
            poses = [p.index_select(0, keep) for p in poses]
            pad = pad.index_select(0, keep)
            samples = samples.index_select(0, keep)
            t = 1

        words, words_mask, sentence = self.encode_text(texts)
        words = words.to(frames.dtype)
        sentence = sentence.to(frames.dtype)
        words_pos = self.text_pos(words_mask).permute(2, 0, 1).to(frames.dtype)  # [L, b, C]
        words_seq = words.permute(1, 0, 2)

        def fuse(src: torch.Tensor) -> torch.Tensor:
            h, w = src.shape[-2:]
            visual = rearrange(src, "(b t) c h w -> (t h w) b c", b=b, t=t)
            visual = self.fusion_module(visual, words_seq, words_mask, words_pos)
            return rearrange(visual, "(t h w) b c -> (b t) c h w", t=t, h=h, w=w)

        srcs = [fuse(self.input_proj[i](f)) for i, f in enumerate(feats[-3:])]
        src_masks, src_poses = list(masks[-3:]), list(poses[-3:])
        extra = self.input_proj[3](feats[-1])
        extra_mask = F.interpolate(pad[None].float(), size=extra.shape[-2:]).to(torch.bool)[0]
        srcs.append(fuse(extra))
        src_masks.append(extra_mask)
        if not padded:
            src_poses.append(self.position_embedding(extra_mask[:1]).to(extra.dtype).expand(extra.shape[0], -1, -1, -1))
        else:
            src_poses.append(self.position_embedding(extra_mask).to(extra.dtype))

        q = self.config.num_queries
        tgt = sentence[:, None, None, :].expand(b, t, q, -1).reshape(b * t, q, -1)
        hs, init_reference, boxes, memory, references = self.transformer(
            srcs, src_masks, src_poses, tgt, self.query_embed.weight, self.bbox_embed
        )
        n_layers = hs.shape[0]
        logits = torch.stack([self.class_embed[lvl](hs[lvl]) for lvl in range(n_layers)])
        logits = rearrange(logits, "l (b t) q k -> l b t q k", b=b, t=t)
        boxes = rearrange(boxes, "l (b t) q n -> l b t q n", b=b, t=t)

        mask_features = self.pixel_decoder([feats[0], *memory], masks, poses, words, words_mask, num_frames=t)
        if self.mask_refiner is not None:
            mask_features = self.mask_refiner(mask_features, samples)
        mask_features = rearrange(mask_features, "(b t) c h w -> b t c h w", b=b, t=t)
        layers = range(n_layers) if all_layer_masks else [n_layers - 1]
        pred_masks: dict[int, torch.Tensor] = {}
        for lvl in layers:
            params = rearrange(self.controller(hs[lvl]), "(b t) q n -> b t q n", b=b, t=t)
            centers = rearrange(references[lvl, ..., :2], "(b t) q n -> b t q n", b=b, t=t)
            pred_masks[lvl] = self.dynamic_mask(mask_features, params, centers, image_size)

        out: dict[str, Any] = {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "pred_masks": pred_masks[n_layers - 1],
        }
        if all_layer_masks:
            out["aux_outputs"] = [
                {"pred_logits": logits[i], "pred_boxes": boxes[i], "pred_masks": pred_masks[i]}
                for i in range(n_layers - 1)
            ]
        out["reference_points"] = rearrange(
            references[-2, ..., :2] if n_layers > 1 else init_reference, "(b t) q n -> b t q n", b=b, t=t
        )
        return out

    def dynamic_mask(
        self, features: torch.Tensor, params: torch.Tensor, centers: torch.Tensor, image_size: torch.Tensor
    ) -> torch.Tensor:
        """Apply each query's generated 1x1 conv stack to the mask features.

        Args:
            features: [b, t, C, h, w] mask features (stride ``config.mask_stride``: 4, or 1 with ``mask_refine``).
            params: [b, t, q, P] generated parameters, split as w0, w1, ..., b0, b1, ... (weights out-major).
            centers: [b, t, q, 2] refined box centres (cx, cy) in [0, 1].
            image_size: [b, 2] (W, H) of the unpadded input in pixels.

        Returns:
            [b, t, q, h, w] mask logits.
        """
        b, t, c, h, w = features.shape
        q = params.shape[2]
        ch = self.config.dynamic_mask_channels
        n_layers = len(self.weight_nums)
        if self.config.rel_coord:
            stride = self.config.mask_stride
            shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=features.device)
            shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=features.device)
            loc_y, loc_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            locations = torch.stack((loc_x, loc_y), 0).to(features.dtype) + stride // 2  # [2, h, w]
            ref = centers * image_size[:, None, None, :]  # [b, t, q, 2] in input pixels
            rel = ref[..., :, None, None] - locations  # [b, t, q, 2, h, w], (dx, dy)
        # One grouped 1x1-conv stack per query, as the official code does (same summation order, so the
        # logits match it to float rounding); run a few frames at a time because the input is repeated per
        # query ([q, C + 2, h, w] per frame).
        per_frame = features.flatten(0, 1)  # [(b t), C, h, w]
        flat_params = params.flatten(0, 1)  # [(b t), q, P]
        flat_rel = rel.flatten(0, 1) if self.config.rel_coord else None
        chunk = 8
        outputs = []
        for start in range(0, b * t, chunk):
            feats = per_frame[start : start + chunk]
            n = feats.shape[0]
            x = feats[:, None].expand(n, q, c, h, w)
            if flat_rel is not None:
                x = torch.cat([x, flat_rel[start : start + chunk]], 2)
            x = x.reshape(1, -1, h, w)
            p = flat_params[start : start + chunk].reshape(n * q, -1)
            splits = list(torch.split(p, self.weight_nums + self.bias_nums, dim=1))
            for i in range(n_layers):
                out_ch = ch if i < n_layers - 1 else 1
                weight = splits[i].reshape(n * q * out_ch, -1, 1, 1)
                bias = splits[n_layers + i].reshape(n * q * out_ch)
                x = F.conv2d(x, weight, bias=bias, groups=n * q)
                if i < n_layers - 1:
                    x = F.relu(x)
            outputs.append(x.reshape(n, q, h, w))
        return torch.cat(outputs, 0).view(b, t, q, h, w)

    # ---------------------------------------------------------------------------------------------- segment
    @torch.no_grad()
    def segment(
        self, frames: torch.Tensor, text: Sequence[str], protocol: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The referred object's mask logits [b, t, H/s, W/s] (s = ``config.mask_stride``) and scores [b, t] under
        an official protocol.

        ``protocol`` (default ``config.protocol``):

        * ``"ytvos"`` (Ref-YouTube-VOS): one query for the whole clip, the argmax of the frame-averaged
          sigmoid scores; clips longer than ``config.max_frames_per_pass`` run in passes and the query is still
          chosen over all frames.
        * ``"davis"`` (Ref-DAVIS17): the same, independently for every clip of ``config.davis_clip_frames``.
        * ``"frame"`` (A2D/JHMDB annotated frame, RefCOCO images): the best query of every frame.

        The scores are the chosen query's sigmoid score in each frame. Foreground is ``logits > 0`` after a
        bilinear (align_corners=False) resize to the frame size.
        """
        protocol = protocol or self.config.protocol
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        t = frames.shape[1]
        if protocol == "davis":
            chunk = self.config.davis_clip_frames
        elif protocol in ("ytvos", "frame"):
            chunk = self.config.max_frames_per_pass or t
        else:
            raise ConfigError(f"unknown protocol {protocol!r}; use 'ytvos', 'davis' or 'frame'")
        scores_all, masks_all = [], []
        for start in range(0, t, chunk):
            out = self._forward(frames[:, start : start + chunk], texts, None, None, all_layer_masks=False)
            scores_all.append(out["pred_logits"].sigmoid().float())  # [b, t, q, K]
            masks_all.append(out["pred_masks"])  # [b, t, q, h, w]
        if protocol == "davis":
            picked = [self._select_video_query(s, m) for s, m in zip(scores_all, masks_all)]
            return torch.cat([p[0] for p in picked], 1), torch.cat([p[1] for p in picked], 1)
        scores, masks = torch.cat(scores_all, 1), torch.cat(masks_all, 1)
        if protocol == "ytvos":
            return self._select_video_query(scores, masks)
        per_query = scores.max(-1).values  # [b, t, q]
        best = per_query.argmax(-1)  # [b, t]
        idx = best[..., None, None, None].expand(-1, -1, 1, *masks.shape[-2:])
        return masks.gather(2, idx).squeeze(2), per_query.gather(2, best[..., None]).squeeze(2)

    @staticmethod
    def _select_video_query(scores: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores [b, t, q, K], masks [b, t, q, h, w] -> one query per video (argmax of mean-over-t score)."""
        best = scores.mean(1).max(-1).values.argmax(-1)  # [b]
        b, t = scores.shape[:2]
        idx = best[:, None, None, None, None].expand(b, t, 1, *masks.shape[-2:])
        per_query = scores.max(-1).values  # [b, t, q]
        return masks.gather(2, idx).squeeze(2), per_query.gather(2, best[:, None, None].expand(b, t, 1)).squeeze(2)

    def segment_window(
        self, frames: torch.Tensor, text: Sequence[str], state: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Segment one window of a longer video, linking the referred query across windows.

        Policy: the query of a window is the argmax of the per-query scores averaged over *all frames seen so
        far* (this window included), so a window follows the object the earlier windows chose unless this
        window's evidence outweighs them. ``state`` is ``(score_sums [b, q, K], frame_count)``. With a single
        window this is exactly the Ref-YouTube-VOS rule.
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        t = frames.shape[1]
        chunk = self.config.max_frames_per_pass or t
        scores_all, masks_all = [], []
        with torch.no_grad():
            for start in range(0, t, chunk):
                out = self._forward(frames[:, start : start + chunk], texts, None, None, all_layer_masks=False)
                scores_all.append(out["pred_logits"].sigmoid().float())
                masks_all.append(out["pred_masks"])
        scores, masks = torch.cat(scores_all, 1), torch.cat(masks_all, 1)
        sums, count = state if state is not None else (torch.zeros_like(scores[:, 0]), 0)
        sums = sums + scores.sum(1)
        count = count + t
        best = (sums / count).max(-1).values.argmax(-1)  # [b]
        b = scores.shape[0]
        idx = best[:, None, None, None, None].expand(b, t, 1, *masks.shape[-2:])
        per_query = scores.max(-1).values
        chosen = per_query.gather(2, best[:, None, None].expand(b, t, 1)).squeeze(2)
        return masks.gather(2, idx).squeeze(2), chosen, (sums, count)

    # ---------------------------------------------------------------------------------------- evaluation hooks
    @torch.no_grad()
    def segment_annotated_frame(
        self, frames: torch.Tensor, text: Sequence[str], frame_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A2D-/JHMDB-Sentences protocol (``engine.evaluate_a2d``): every query of the annotated frame.

        The whole clip [b, t, 3, H, W] goes through the backbone and only ``frame_index`` (default the centre,
        ``t // 2``) is decoded. Returns mask logits [b, q, H/s, W/s] and scores [b, q] (the sigmoid class score,
        the max over classes; the A2D models have one class). All queries are ranked for mAP; the top-scoring one
        is the prediction for precision@K and IoU.
        """
        texts = validate_texts(text)
        index = frames.shape[1] // 2 if frame_index is None else int(frame_index)
        out = self._forward(frames, texts, None, [index] * len(texts), all_layer_masks=False)
        scores = out["pred_logits"][:, 0].float().sigmoid().max(-1).values  # [b, q]
        return out["pred_masks"][:, 0], scores

    def output_upsampling(self, protocol: str | None = None) -> str:
        """``inference_ytvos.py`` / ``inference_davis.py`` resize the chosen logits straight from H/4 to the frame
        size (``"direct"``); the A2D/JHMDB and RefCOCO post-processors (``protocol="frame"``) upsample to the input
        size, threshold, crop and resize with nearest (``"threshold-nearest"``)."""
        return "threshold-nearest" if (protocol or self.config.protocol) == "frame" else "direct"

    def annotated_clip_frames(self) -> int | None:
        """None: ReferFormer's A2D/JHMDB clip length is an option of the evaluation (the dataset's ``num_frames``),
        not ``preprocessing.window``, which is only the Predictor's streaming window."""
        return None

    def benchmark_protocol(self, benchmark: str) -> str | None:
        """Ref-DAVIS17 runs ``inference_davis.py`` (a query per 36-frame clip); Ref-YouTube-VOS and MeViS the whole
        video with one query (``inference_ytvos.py``)."""
        return {"refdavis": "davis", "ytvos": "ytvos", "mevis": "ytvos"}.get(benchmark)

"""LAVT (Yang et al., "LAVT: Language-Aware Vision Transformer for Referring Image Segmentation", CVPR 2022).

Re-implementation of the image models of yz93/LAVT-RIS (commit 1da0af9): ``lavt`` and ``lavt_one`` are one
network here (BERT inside the model, as in ``lavt_one``); the converter reads both official layouts.

Data flow: image -> 2-D Swin (:class:`~lvseg.models.layers.swin.SwinBackbone`, patch 4, window 7 or 12, zero
padding after norm1, padded tokens unmasked, shift mask -100, no window shrinking); after the blocks of stage
``i`` the tokens ``x_i`` [B, h_i*w_i, C_i] and the BERT word features go through a PWAM giving ``F_i``; the
language gate updates ``x_i <- x_i + gate(F_i) * F_i`` for the next stage, and the decoder reads
``LayerNorm_i(F_i)`` (not the gated features; the last stage's gate is never used). SimpleDecoding gives
2-class logits at stride 4, upsampled bilinearly (``align_corners=True``) to the input size; the mask is the
argmax of the 2 channels (index 1 = referred object).

Shapes: ``B`` images (one per expression), ``N`` text tokens (the budget, 20), ``C`` = ``embed_dim``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InvalidInputError
from ..base import RVOSModel, check_clip_frames, validate_texts
from ..layers.pwam import PWAM, LanguageGate, SimpleDecoder
from ..layers.swin import SwinBackbone
from ..layers.text import bert_last_hidden_state, bert_token_ids, build_bert
from .config import LAVTConfig

__all__ = ["LAVT", "LAVTConfig", "two_class_to_logit"]

logger = logging.getLogger(__name__)


def two_class_to_logit(logits: torch.Tensor) -> torch.Tensor:
    """[..., 2, h, w] class logits -> [..., h, w] ``logit_1 - logit_0``: ``> 0`` exactly where the official
    ``argmax`` picks the object (a tie is background in both)."""
    return logits[..., 1, :, :] - logits[..., 0, :, :]


class LAVT(RVOSModel):
    """LAVT image model: multi-modal Swin (PWAM + language gate per stage) + BERT + SimpleDecoding.

    ``forward`` gives the 2-class logits at the input size (what the official loss uses); ``segment`` applies
    the RefCOCO protocol (square resize, argmax) to every frame of a video independently.
    """

    config_class = LAVTConfig
    architecture = "lavt"
    config: LAVTConfig

    def __init__(self, config: LAVTConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        cfg = config
        self.tokenizer = tokenizer
        self.backbone = SwinBackbone(
            cfg.embed_dim,
            cfg.depths,
            cfg.num_heads,
            video=False,
            window=(1, cfg.window, cfg.window),
            drop_path_rate=cfg.drop_path_rate,
            fused_attention=cfg.fused_attention,
            output_norms=True,
        )
        text_dim = int(cfg.text_encoder["hidden_size"])
        channels = self.backbone.num_channels
        self.fusions = nn.ModuleList(
            PWAM(c, text_dim, num_heads=h, dropout=cfg.fusion_dropout) for c, h in zip(channels, cfg.fusion_heads)
        )
        self.gates = nn.ModuleList(LanguageGate(c) for c in channels)
        self.classifier = SimpleDecoder(channels[-1])
        self.text_encoder = build_bert(cfg.text_encoder)

    # ------------------------------------------------------------------------------------------- inputs
    def _check_frames(self, frames: torch.Tensor, texts: Sequence[str]) -> None:
        check_clip_frames(frames, texts, "ImageNet mean/std")
        if frames.shape[1] < 1 or min(frames.shape[-2:]) < 4:
            raise InvalidInputError(f"frames of shape {tuple(frames.shape)} are too small: LAVT needs >= 4x4 pixels")

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The official token budget (``preprocessing.max_text_tokens``, 20 for images): ids [B, N] and
        attention mask [B, N] (1 = token), ``[CLS] ... [SEP]`` cut to N, padded with id 0."""
        if self.tokenizer is None:
            raise ConfigError(
                "this LAVT has no tokenizer: load it with lvseg.load(...) / from_pretrained, or set "
                "model.tokenizer = transformers.BertTokenizer.from_pretrained('bert-base-uncased')"
            )
        budget = min(
            self.config.preprocessing.max_text_tokens, int(self.config.text_encoder["max_position_embeddings"])
        )
        return bert_token_ids(self.tokenizer, list(texts), budget, int(self.config.text_encoder.get("pad_token_id", 0)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BERT's last hidden state [B, N, 768] (no pooler, no projection), as the official transformers 3.0.2
        computes it (see :func:`~lvseg.models.layers.text.bert_last_hidden_state`)."""
        return bert_last_hidden_state(self.text_encoder, input_ids.to(self.device), attention_mask.to(self.device))

    # ------------------------------------------------------------------------------------------- forward
    def forward_features(self, images: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """The network on prepared inputs (the official ``forward`` after BERT).

        Args:
            images: normalised images [B, 3, H, W].
            words: word features [B, N, Ct] (BERT's last hidden state).
            word_mask: [B, N], 1 on real tokens.

        Returns:
            class logits [B, 2, H, W] (index 1 = referred object), upsampled bilinearly (align_corners=True).
        """
        words_t = words.transpose(1, 2).to(images.dtype)  # [B, Ct, N]
        mask = word_mask.to(images.dtype)
        last = len(self.fusions) - 1

        def fuse(i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b, d, h, w, c = x.shape  # d == 1
            tokens = x.reshape(b, d * h * w, c)
            fused = self.fusions[i](tokens, words_t, mask)
            # the last stage's gated sum feeds nothing (the decoder reads the PWAM output)
            nxt = x if i == last else self.gates[i](tokens, fused).view(b, d, h, w, c)
            return nxt, fused.view(b, d, h, w, c)

        c1, c2, c3, c4 = self.backbone(images, 1, stage_fn=fuse)
        logits = self.classifier(c4, c3, c2, c1)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, frames: torch.Tensor, text: Sequence[str]) -> torch.Tensor:
        """Class logits [B, T, 2, H, W] of every frame (frames are not resized: the training pipeline resizes).

        Args:
            frames: normalised frames [B, T, 3, H, W] (T = 1 for an image); one expression per video.
            text: ``B`` expressions.
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        b, t = frames.shape[:2]
        ids, attention = self.tokenize(texts)
        words = self.encode_text(ids, attention)
        words = words.repeat_interleave(t, dim=0)
        attention = attention.to(frames.device).repeat_interleave(t, dim=0)
        logits = self.forward_features(frames.flatten(0, 1).to(self.dtype), words, attention)
        return logits.unflatten(0, (b, t))

    # ------------------------------------------------------------------------------------------- segment
    def _square(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, 3, S, S] with S = ``image_size`` (bilinear, antialiased; aspect not kept)."""
        size = self.config.image_size
        if tuple(frames.shape[-2:]) == (size, size):
            return frames
        # in float32: the antialiased kernel has no bfloat16/float16 CPU implementation
        square = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return square.to(frames.dtype)

    @torch.no_grad()
    def segment(self, frames: torch.Tensor, text: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """RefCOCO protocol on every frame: resize to ``image_size`` x ``image_size`` (aspect not kept), run,
        upsample the stride-4 logits to that square (bilinear, align_corners=True), argmax of the 2 classes.

        Returns:
            mask logits [B, T, S, S] (``logit_1 - logit_0``; ``> 0`` is the official argmax mask) and scores
            [B, T] (the highest foreground probability of the frame).
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        t = frames.shape[1]
        ids, attention = self.tokenize(texts)
        words = self.encode_text(ids, attention)
        attention = attention.to(frames.device)
        # the Predictor passes one clip expanded for several expressions: every frame is run per expression anyway
        out = []
        for i in range(t):
            images = self._square(frames[:, i].to(self.dtype))
            out.append(two_class_to_logit(self.forward_features(images, words, attention)))
        logits = torch.stack(out, 1)  # [B, T, S, S]
        scores = logits.flatten(2).amax(-1).float().sigmoid()
        return logits, scores

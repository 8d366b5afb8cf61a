"""LAVT video model (``lavt_video``; Yang et al., "Language-Aware Vision Transformer for Referring Segmentation",
TPAMI 2024), re-implemented from the facts of Yxxxb/LAVT-RS (commit c464cf8).

Data flow: a clip [B, T, 3, S, S] -> Video Swin (:class:`~lvseg.models.layers.swin.SwinBackbone` with
``video=True``: patch 1x4x4, no temporal downsampling, 3-D windows shrunk to the feature size where it is not
larger, zero padding after norm1, shift mask -100). After the blocks of stage ``i`` the tokens
[B, C_i, T, h_i, w_i] and the BERT word features go through the separable 3-D PWAM
(:class:`SeparableTemporalPWAM`) giving ``F_i``; the language gate updates ``x_i <- x_i + gate(F_i) * F_i`` for the
next stage and the decoder reads ``LayerNorm_i(F_i)`` frame by frame (SimpleDecoding on [B*T, C_i, h_i, w_i],
clip-major). The 2-class logits at stride 4 are upsampled bilinearly (``align_corners=True``) to the input size.

A frame's prediction depends on the whole clip: the 3-D window attention, the 3x3x3 convolutions (zero padded at
the clip's ends) and the InstanceNorm3d statistics of the PWAM all mix frames.
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
from ..layers.pwam import LanguageGate, SimpleDecoder, masked_word_attention
from ..layers.swin import SwinBackbone
from ..layers.text import bert_last_hidden_state, bert_token_ids, build_bert
from .model import two_class_to_logit
from .video_config import LAVTVideoConfig

__all__ = ["LAVTVideo", "LAVTVideoConfig", "SeparableTemporalPWAM", "first_occurrence"]

logger = logging.getLogger(__name__)

Triple = tuple[int, int, int]


def _conv3d(channels_in: int, channels_out: int, kernel: Triple) -> nn.Conv3d:
    """Stride-1 Conv3d that keeps the map size (zero padding ``k // 2``; kernels are odd)."""
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return nn.Conv3d(channels_in, channels_out, kernel, stride=1, padding=padding)


class SeparableTemporalPWAM(nn.Module):
    """The separable 3-D pixel-word attention module of the released video models (official ``SepTPWAM`` with
    ``--w_t3x3_s1x1 --mm_t3x3_s1x1``).

    Every projection has a "t" branch (Conv3d with ``temporal_kernel``, 3x3x3 in the release) and an "s" branch
    (Conv3d with ``spatial_kernel`` for the visual and query projections, 1x1x1 for the output projections), summed:

    * ``vis = GELU(temporal_vis_project(x)) + GELU(spatial_vis_project(x))``
    * ``query = IN3d(f_query_t(x)) + IN3d(f_query_s(x))`` (InstanceNorm over T*H*W, no affine)
    * ``lang = attend(query, words)`` (keys/values masked, logits scaled by ``C ** -0.5``, ``1e4 * m - 1e4``)
    * ``lang = IN3d(W_t(lang)) + IN3d(W_s(lang))``
    * ``F = GELU(project_mm_t(vis * lang)) + GELU(project_mm_s(vis * lang))``

    Parameter names follow the official state dict (``temporal_vis_project.0``, ``f_query_t.0``, ``W_s.0``, ...).
    """

    def __init__(
        self,
        dim: int,
        text_dim: int = 768,
        num_heads: int = 1,
        dropout: float = 0.0,
        temporal_kernel: Triple = (3, 3, 3),
        spatial_kernel: Triple = (1, 1, 1),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"PWAM channels {dim} must be a multiple of its {num_heads} heads")
        self.num_heads = num_heads
        one: Triple = (1, 1, 1)
        self.temporal_vis_project = nn.Sequential(_conv3d(dim, dim, temporal_kernel), nn.GELU(), nn.Dropout(dropout))
        self.spatial_vis_project = nn.Sequential(_conv3d(dim, dim, spatial_kernel), nn.GELU(), nn.Dropout(dropout))
        self.f_query_t = nn.Sequential(_conv3d(dim, dim, temporal_kernel), nn.InstanceNorm3d(dim))
        self.f_query_s = nn.Sequential(_conv3d(dim, dim, spatial_kernel), nn.InstanceNorm3d(dim))
        self.f_key = nn.Sequential(nn.Conv1d(text_dim, dim, 1))
        self.f_value = nn.Sequential(nn.Conv1d(text_dim, dim, 1))
        self.W_t = nn.Sequential(_conv3d(dim, dim, temporal_kernel), nn.InstanceNorm3d(dim))
        self.W_s = nn.Sequential(_conv3d(dim, dim, one), nn.InstanceNorm3d(dim))
        self.project_mm_t = nn.Sequential(_conv3d(dim, dim, temporal_kernel), nn.GELU(), nn.Dropout(dropout))
        self.project_mm_s = nn.Sequential(_conv3d(dim, dim, one), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T, H, W] visual features; words: [B, Ct, N]; word_mask: [B, N] (1 = token) -> F [B, C, T, H, W]."""
        b, c, t, h, w = x.shape
        mask = word_mask.to(words.dtype)
        vis = (self.temporal_vis_project(x) + self.spatial_vis_project(x)).flatten(2)  # [B, C, T*H*W]
        query = (self.f_query_t(x) + self.f_query_s(x)).flatten(2)  # [B, C, T*H*W]
        key = self.f_key(words) * mask[:, None, :]
        value = self.f_value(words) * mask[:, None, :]
        lang = masked_word_attention(query, key, value, mask, self.num_heads).view(b, c, t, h, w)
        lang = (self.W_t(lang) + self.W_s(lang)).flatten(2)
        # the product of the flattened maps, as in the official code (the product's memory layout selects the
        # Conv3d kernels below, and so their float rounding)
        mm = (vis * lang).view(b, c, t, h, w)
        return self.project_mm_t(mm) + self.project_mm_s(mm)


def first_occurrence(frames: torch.Tensor, index: int) -> int:
    """The first clip position showing the same frame as position ``index`` (frames [B, T, 3, H, W]).

    The official A2D test builds the clip from frame indices clamped at the video's ends and sorted, and predicts
    at ``indices.index(annotated)``: near the start of a video the annotated frame is repeated and its *first*
    position is used. Repeated frames are consecutive, so this walks back while the frame is bit-identical.
    """
    start = index
    while start > 0 and torch.equal(frames[:, start - 1], frames[:, index]):
        start -= 1
    return start


class LAVTVideo(RVOSModel):
    """LAVT video model: multi-modal Video Swin (separable 3-D PWAM + language gate per stage) + BERT + the
    SimpleDecoding decoder per frame.

    ``forward`` gives the 2-class logits [B, T, 2, H, W] at the input size (what the official loss uses);
    ``segment`` applies the Ref-YouTube-VOS protocol (the clip as given resized to a square, argmax);
    ``segment_annotated_frame`` the A2D-Sentences one (prediction at the annotated frame's first position).

    Long videos (the Predictor's windows, ``preprocessing.window`` = 36 frames by default): each window is an
    independent clip (no state across windows); with ``overlap`` the Predictor averages the overlapping frames.
    Every Ref-YouTube-VOS validation video fits in one window, so the default reproduces the official protocol
    there; on longer videos a frame sees only its own window (the official code has no rule for them). Lower
    ``window`` to bound memory (the cost grows linearly with the clip length).
    """

    config_class = LAVTVideoConfig
    architecture = "lavt_video"
    config: LAVTVideoConfig

    def __init__(self, config: LAVTVideoConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        cfg = config
        self.tokenizer = tokenizer
        self.backbone = SwinBackbone(
            cfg.embed_dim,
            cfg.depths,
            cfg.num_heads,
            video=True,
            window=cfg.window,
            drop_path_rate=cfg.drop_path_rate,
            fused_attention=cfg.fused_attention,
            output_norms=True,
        )
        text_dim = int(cfg.text_encoder["hidden_size"])
        channels = self.backbone.num_channels
        self.fusions = nn.ModuleList(
            SeparableTemporalPWAM(
                c,
                text_dim,
                num_heads=h,
                dropout=cfg.fusion_dropout,
                temporal_kernel=cfg.temporal_kernel,
                spatial_kernel=cfg.spatial_kernel,
            )
            for c, h in zip(channels, cfg.fusion_heads)
        )
        # the last stage's gate feeds nothing (the decoder reads the PWAM output); checkpoints may lack it
        gated = channels if cfg.last_stage_gate else channels[:-1]
        self.gates = nn.ModuleList(LanguageGate(c) for c in gated)
        self.classifier = SimpleDecoder(channels[-1])
        self.text_encoder = build_bert(cfg.text_encoder)

    # ------------------------------------------------------------------------------------------- inputs
    def _check_frames(self, frames: torch.Tensor, texts: Sequence[str]) -> None:
        check_clip_frames(frames, texts, "ImageNet mean/std")
        if frames.shape[1] < 1 or min(frames.shape[-2:]) < 4:
            raise InvalidInputError(f"frames of shape {tuple(frames.shape)} are too small: LAVT needs >= 4x4 pixels")

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The official video token budget (``preprocessing.max_text_tokens``, 22): ids [B, N] and attention mask
        [B, N] (1 = token), ``[CLS] ... [SEP]`` cut to N (a long expression loses ``[SEP]``), padded with id 0."""
        if self.tokenizer is None:
            raise ConfigError(
                "this LAVT video model has no tokenizer: load it with lvseg.load(...) / from_pretrained, or set "
                "model.tokenizer = transformers.BertTokenizerFast.from_pretrained('bert-base-uncased')"
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
    def forward_features(self, frames: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """The network on prepared inputs (the official ``forward`` after BERT).

        Args:
            frames: normalised clips [B, T, 3, H, W].
            words: word features [B, N, Ct] (BERT's last hidden state).
            word_mask: [B, N], 1 on real tokens.

        Returns:
            class logits [B, T, 2, H, W] (index 1 = referred object), upsampled bilinearly (align_corners=True).
        """
        b, t = frames.shape[:2]
        words_t = words.transpose(1, 2).to(frames.dtype)  # [B, Ct, N]
        mask = word_mask.to(frames.dtype)
        num_gates = len(self.gates)
        last = len(self.fusions) - 1

        def fuse(i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # x: [B, T, h, w, C] tokens after the stage's blocks. The official tokens are stored channels-first
            # (their layout comes from the patch embedding), so its Conv3d run on a contiguous [B, C, T, h, w]
            # tensor; the same layout here selects the same kernels and gives the official rounding.
            fused = self.fusions[i](x.permute(0, 4, 1, 2, 3).contiguous(), words_t, mask).permute(0, 2, 3, 4, 1)
            nxt = x if i == last or i >= num_gates else self.gates[i](x, fused)
            return nxt, fused

        maps = self.backbone(frames.flatten(0, 1), t, stage_fn=fuse)  # [(B T), C_i, h_i, w_i]
        # the official decoder reads channels-last views of the normed tokens; the same layout selects the same
        # convolution kernels (and so the official rounding)
        c1, c2, c3, c4 = (m.contiguous(memory_format=torch.channels_last) for m in maps)
        logits = self.classifier(c4, c3, c2, c1)
        logits = F.interpolate(logits, size=frames.shape[-2:], mode="bilinear", align_corners=True)
        return logits.unflatten(0, (b, t))

    def forward(self, frames: torch.Tensor, text: Sequence[str]) -> torch.Tensor:
        """Class logits [B, T, 2, H, W] of every frame of each clip (frames are not resized: the training pipeline
        resizes).

        Args:
            frames: normalised clips [B, T, 3, H, W]; one expression per clip.
            text: ``B`` expressions.
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        ids, attention = self.tokenize(texts)
        words = self.encode_text(ids, attention)
        return self.forward_features(frames.to(self.dtype), words, attention.to(frames.device))

    # ------------------------------------------------------------------------------------------- segment
    def _square(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, 3, S, S] with S = ``image_size`` (bilinear, antialiased; aspect not kept)."""
        size = self.config.image_size
        if tuple(frames.shape[-2:]) == (size, size):
            return frames
        # in float32: the antialiased kernel has no bfloat16/float16 CPU implementation
        flat = F.interpolate(frames.flatten(0, 1).float(), size=(size, size), mode="bilinear", antialias=True)
        return flat.to(frames.dtype).unflatten(0, frames.shape[:2])

    @torch.no_grad()
    def segment(
        self, frames: torch.Tensor, text: str | Sequence[str], protocol: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ref-YouTube-VOS protocol (``test_ytvos.py``) on the clip as given: resize every frame to ``image_size``
        x ``image_size`` (aspect not kept), one forward over the whole clip, logits upsampled to that square
        (bilinear, align_corners=True); the Predictor then resizes them to the original frame size with
        align_corners=True (:meth:`output_upsampling`) and thresholds at 0 (= the official argmax).

        Args:
            frames: normalised clips [B, T, 3, H, W]; one expression per clip.
            text: ``B`` expressions.
            protocol: None or ``"ytvos"`` (the same rule; accepted for :func:`lvseg.evaluate`).

        Returns:
            mask logits [B, T, S, S] (``logit_1 - logit_0``; ``> 0`` is the official argmax mask) and scores [B, T]
            (the highest foreground probability of the frame).
        """
        if protocol not in (None, "ytvos"):
            raise ConfigError(f"unknown protocol {protocol!r} for LAVT video; use 'ytvos' (or None)")
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        ids, attention = self.tokenize(texts)
        words = self.encode_text(ids, attention)
        clip = self._square(frames.to(self.dtype))
        logits = two_class_to_logit(self.forward_features(clip, words, attention.to(frames.device)))
        scores = logits.flatten(2).amax(-1).float().sigmoid()
        return logits, scores

    def segment_annotated_frame(
        self, frames: torch.Tensor, text: Sequence[str], frame_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A2D-Sentences protocol (``test.py --dataset a2d``): the clip around the annotated frame (16 frames,
        clamped at the video's ends), the prediction taken at the annotated frame's *first* position in the clip
        (:func:`first_occurrence`; it differs from the centre near a video's start).

        Returns:
            ``(mask_logits [B, 1, S, S], scores [B, 1])``: one candidate, the frame's mask.
        """
        index = frames.shape[1] // 2 if frame_index is None else int(frame_index)
        if not 0 <= index < frames.shape[1]:
            raise InvalidInputError(f"frame_index {index} is outside a clip of {frames.shape[1]} frames")
        position = first_occurrence(frames, index)
        logits, scores = self.segment(frames, text)
        return logits[:, position : position + 1], scores[:, position : position + 1]

    def output_upsampling(self, protocol: str | None = None) -> str:
        """``test_ytvos.py`` upsamples the logits from the square input straight to the frame size with
        ``align_corners=True`` before the argmax (``"aligned"``)."""
        return "aligned"

    def annotated_clip_frames(self) -> int | None:
        """The official A2D-Sentences test clip: ``config.annotated_clip_frames`` (16) frames."""
        return self.config.annotated_clip_frames

    def benchmark_protocol(self, benchmark: str) -> str | None:
        """Ref-YouTube-VOS runs each whole video as one clip (``test_ytvos.py``)."""
        return {"ytvos": "ytvos"}.get(benchmark)

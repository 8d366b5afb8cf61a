"""VLP-RVOS (arXiv 2405.10610): a frozen vision-language pretrained backbone adapted to referring video object
segmentation with temporal-aware prompts, reference-guided encoding, VL feature fusion and cube-frame
spatial-temporal reasoning. One binary mask per frame; videos run clip by clip, each clip's prompt tokens passed to
the next (the released ``infer_ytvos.py``).

The authors released no model code: this is lvseg's implementation from the paper's abstract, its overview figure
and the released training/inference scripts; docs/models/vlp_rvos.md says which part follows which source.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InvalidInputError
from .. import register_family
from ..base import RVOSModel, check_clip_frames, validate_texts
from .config import VLPRVOSConfig
from .modules import (
    CubeFrameAttention,
    FeatureFusion,
    LocalMotion,
    PromptEncoder,
    ReferenceGuide,
    Segmentor,
    ShallowDecoderLayer,
    VLBackbone,
    build_backbone,
    volume_position,
)

__all__ = ["VLPRVOS"]

logger = logging.getLogger(__name__)


@register_family
class VLPRVOS(RVOSModel):
    """VLP-RVOS on a frozen CLIP (or VLMo) backbone; see :class:`VLPRVOSConfig` for every part and size.

    ``forward(frames, text, video_prompt=None)`` runs the frames clip by clip (``clip_frames`` each) and returns
    the raw outputs for the loss; ``segment`` applies the released inference protocol; ``segment_window`` carries
    the prompt tokens across the Predictor's windows.
    """

    config_class = VLPRVOSConfig
    architecture = "vlp_rvos"
    config: VLPRVOSConfig

    def __init__(self, config: VLPRVOSConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        cfg = config
        self.tokenizer = tokenizer
        self.backbone: VLBackbone = build_backbone(cfg)
        dv, dt, d = self.backbone.vision_dim, self.backbone.text_dim, cfg.hidden_dim
        nh = cfg.temporal_prompts  # historical tokens: the previous clip's temporal prompts
        self.prompt_encoder = PromptEncoder(
            cfg.text_prompts,
            cfg.vision_prompts,
            cfg.temporal_prompts,
            nh,
            dt,
            dv,
            d,
            cfg.num_heads,
            cfg.prompt_layers,
            cfg.dropout,
        )
        self.initial_history = nn.Parameter(torch.randn(nh, dv) * 0.02)  # the first clip has no previous clip
        self.history_proj = nn.Sequential(nn.Linear(dv, dv), nn.LayerNorm(dv))
        self.deep_prompts = nn.Parameter(torch.zeros(len(cfg.deep_prompt_layers), cfg.vision_prompts, dv))
        self.word_to_vision = nn.Linear(dt, dv)
        self.guides = nn.ModuleDict({str(i): ReferenceGuide(dv, cfg.guide_heads) for i in cfg.guide_layers})
        self.reduce = nn.ModuleList(nn.Sequential(nn.Linear(dv, d), nn.LayerNorm(d)) for _ in cfg.extract_layers)
        self.shallow_proj = nn.Sequential(nn.Linear(dv, d), nn.LayerNorm(d))
        self.word_proj = nn.Linear(dt, d)
        self.sentence_proj = nn.Linear(self.backbone.joint_dim, d)
        self.fusion = FeatureFusion(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.fusion_layers)
        self.str_encoders = nn.ModuleList(
            CubeFrameAttention(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.cube_size) for _ in range(cfg.str_layers)
        )
        self.str_decoders = nn.ModuleList(
            ShallowDecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.str_layers)
        )
        # pixel-text similarity in the backbone's joint space (cosine), as a logit map: scale and bias learnable
        self.similarity_scale = nn.Parameter(torch.tensor(10.0))
        self.similarity_bias = nn.Parameter(torch.tensor(0.0))
        self.segDecoder = Segmentor(d + 1, 1, cfg.segmentor_dim)
        self.motion = LocalMotion(d, cfg.volume_motion) if cfg.volume_motion else None
        self._deep_index = {layer: k for k, layer in enumerate(cfg.deep_prompt_layers)}

    # ------------------------------------------------------------------------------------------- frozen parts
    def train(self, mode: bool = True) -> VLPRVOS:
        """Train mode for the added modules; the frozen backbone stays in eval mode (no dropout, as frozen)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters that training updates (everything but the frozen backbone)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------- inputs
    def _check_frames(self, frames: torch.Tensor, texts: Sequence[str]) -> None:
        check_clip_frames(frames, texts, "ImageNet mean/std")
        if frames.shape[1] < 1 or min(frames.shape[-2:]) < 4:
            raise InvalidInputError(f"frames of shape {tuple(frames.shape)} are too small: VLP-RVOS needs >= 4x4")

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, N] and attention mask [B, N] (1 = token) of the expressions, start and end tokens
        included, cut to the positions the language prompts leave (``config.max_text_tokens``)."""
        if self.tokenizer is None:
            raise ConfigError(
                "this VLP-RVOS has no tokenizer: load it with lvseg.load(...) / from_pretrained, or set "
                "model.tokenizer to the CLIP tokenizer saved with the converted backbone"
            )
        budget = min(self.config.preprocessing.max_text_tokens, self.config.max_text_tokens)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=budget, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if int(mask.sum(1).min()) < 2:
            raise InvalidInputError(
                "an expression tokenized to fewer than 2 tokens (start and end): check the tokenizer"
            )
        return ids.to(self.device), mask.to(self.device)

    def _square(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, 3, S, S], S = ``image_size`` (bilinear, aspect not kept, as released)."""
        size = self.config.image_size
        if tuple(frames.shape[-2:]) == (size, size):
            return frames
        b, t = frames.shape[:2]
        square = F.interpolate(frames.flatten(0, 1).float(), size=(size, size), mode="bilinear", align_corners=False)
        return square.to(frames.dtype).unflatten(0, (b, t))

    def initial_state(self, batch: int) -> torch.Tensor:
        """The historical tokens of a video's first clip: [batch, temporal_prompts, Dv] (learned)."""
        return self.initial_history.unsqueeze(0).expand(batch, -1, -1)

    # ------------------------------------------------------------------------------------------- one clip
    def forward_clip(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, history: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One clip.

        Args:
            frames: normalised frames [B, T, 3, S, S], S a multiple of the patch size.
            input_ids, attention_mask: [B, N] from :meth:`tokenize`.
            history: the previous clip's ``prompt_token`` [B, Pm, Dv] (:meth:`initial_state` for the first clip).

        Returns:
            ``pred_masks`` [B, T, S, S] logits, ``similarity`` [B, T, h, w] pixel-text logits (h = w = S / patch),
            ``prompt_token`` [B, Pm, Dv] for the next clip.
        """
        cfg, bb = self.config, self.backbone
        b, t, _, height, width = frames.shape
        gh, gw = height // bb.patch_size, width // bb.patch_size
        n_patch = gh * gw
        dtype = self.dtype
        text_prompts, vision_prompts, temporal_prompts = self.prompt_encoder(history.to(dtype))
        words, word_mask, sentence = bb.encode_text(input_ids, attention_mask, text_prompts)
        word_pad = ~word_mask
        guide_words = self.word_to_vision(words).repeat_interleave(t, 0)  # [B*T, N, Dv]
        guide_pad = word_pad.repeat_interleave(t, 0)

        tokens = bb.embed_frames(frames.flatten(0, 1).to(dtype))  # [B*T, 1 + P, Dv]
        nh, nv, nm = history.shape[1], vision_prompts.shape[1], temporal_prompts.shape[1]
        x = torch.cat(
            [
                tokens,
                history.to(dtype).repeat_interleave(t, 0),
                vision_prompts.repeat_interleave(t, 0),
                temporal_prompts.repeat_interleave(t, 0),
            ],
            1,
        )  # [B*T, 1 + P + nh + nv + nm, Dv]
        v_start = 1 + n_patch + nh
        m_start = v_start + nv
        taps = []
        for i in range(bb.num_layers):
            if i in self._deep_index and nv:
                offset = self.deep_prompts[self._deep_index[i]]
                x = torch.cat([x[:, :v_start], x[:, v_start:m_start] + offset, x[:, m_start:]], 1)
            h = bb.norm1(i, x)
            branch = bb.attention(i, h)  # the frame's own self-attention
            guide = self.guides[str(i)] if str(i) in self.guides else None
            if guide is not None:
                branch = branch + guide(h, guide_words, guide_pad)
            x = x + branch
            x = x + bb.ffn(i, x)
            if i in cfg.temporal_layers:
                # parameter-reusing temporal capture: each frame's temporal prompts attend to the patches and
                # temporal prompts of every frame of the clip with this layer's frozen norm and attention
                dv = x.shape[-1]
                temporal = x[:, m_start:].reshape(b, t * nm, dv)
                context = torch.cat([x[:, 1 : 1 + n_patch].reshape(b, t * n_patch, dv), temporal], 1)
                update = bb.attention(i, bb.norm1(i, temporal), bb.norm1(i, context))
                x = torch.cat([x[:, :m_start], (temporal + update).reshape(b * t, nm, dv)], 1)
            if i in cfg.extract_layers:
                taps.append(x[:, 1 : 1 + n_patch])

        # history for the next clip: the clip's temporal prompts, averaged over frames
        temporal_out = x[:, m_start:].reshape(b, t, nm, -1).mean(1)
        prompt_token = self.history_proj(temporal_out)

        # pixel-text similarity in the aligned space: cosine of projected patches and the sentence
        patches = F.normalize(bb.project_patches(x[:, 1 : 1 + n_patch]), dim=-1)  # [B*T, P, J]
        sent = F.normalize(sentence, dim=-1).repeat_interleave(t, 0)  # [B*T, J]
        similarity = (patches @ sent.unsqueeze(-1)).squeeze(-1) * self.similarity_scale + self.similarity_bias

        # VL feature fusion over the multi-level taps
        d = cfg.hidden_dim
        vis = sum(reduce(tap) for reduce, tap in zip(self.reduce, taps))  # [B*T, P, d]
        assert isinstance(vis, torch.Tensor)
        if self.motion is not None and cfg.motion_before_fusion:  # motion in the tokens the words attend to
            vis = vis + self.motion(vis.view(b, t, gh, gw, d)).view(b * t, n_patch, d)
        fused, fused_words = self.fusion(
            vis.reshape(b, t * n_patch, d), self.word_proj(words), word_pad, self.sentence_proj(sentence)
        )
        # spatial-temporal reasoning: cube-frame encoder on the fused volume + decoder on the shallow features
        volume = fused.view(b, t, gh, gw, d)
        motion = None
        if self.motion is not None and not cfg.motion_before_fusion:
            motion = self.motion(volume)  # from the contents, before positions
        if cfg.volume_position:  # where and when each token is, in its values (lvseg's option)
            volume = volume + volume_position(t, gh, gw, d, volume.device).to(volume.dtype)
        if motion is not None:  # where each token's content was a frame earlier (lvseg's option)
            volume = volume + motion
        shallow = self.shallow_proj(taps[0]).reshape(b, t * n_patch, d)
        for encoder, decoder in zip(self.str_encoders, self.str_decoders):
            shallow = decoder(shallow, fused_words, word_pad)
            volume = encoder(volume) + shallow.view(b, t, gh, gw, d)

        seg_in = torch.cat(
            [volume.reshape(b * t, gh, gw, d).permute(0, 3, 1, 2), similarity.view(b * t, 1, gh, gw).to(volume.dtype)],
            1,
        )
        masks = self.segDecoder(seg_in, (height, width))  # [B*T, 1, S, S]
        return {
            "pred_masks": masks.view(b, t, height, width),
            "similarity": similarity.view(b, t, gh, gw),
            "prompt_token": prompt_token,
        }

    # ------------------------------------------------------------------------------------------- clips
    def _run(self, frames: torch.Tensor, texts: Sequence[str], history: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Every clip of ``frames`` [B, T, 3, S, S] in order, prompt tokens carried; outputs concatenated over T."""
        ids, mask = self.tokenize(texts)
        state = self.initial_state(frames.shape[0]) if history is None else history.to(self.device)
        outs: list[dict[str, torch.Tensor]] = []
        clip = self.config.clip_frames
        for start in range(0, frames.shape[1], clip):
            out = self.forward_clip(frames[:, start : start + clip], ids, mask, state)
            state = out["prompt_token"].detach() if self.config.detach_history else out["prompt_token"]
            outs.append(out)
        return {
            "pred_masks": torch.cat([o["pred_masks"] for o in outs], 1),
            "similarity": torch.cat([o["similarity"] for o in outs], 1),
            "prompt_token": outs[-1]["prompt_token"],
        }

    def forward(
        self, frames: torch.Tensor, text: Sequence[str], video_prompt: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Raw outputs for the loss: the frames run in clips of ``clip_frames``, each clip's ``prompt_token``
        passed to the next (training samples of 2 x ``clip_frames`` frames give the released two-clip unroll).

        Args:
            frames: normalised frames [B, T, 3, H, W] (resized to ``image_size`` squared when they differ).
            text: ``B`` expressions.
            video_prompt: historical tokens [B, Pm, Dv] from an earlier call (None: the start of a video).

        Returns:
            ``pred_masks`` [B, T, S, S], ``similarity`` [B, T, S/p, S/p], ``prompt_token`` [B, Pm, Dv].
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        return self._run(self._square(frames.to(self.device)), texts, video_prompt)

    @torch.no_grad()
    def segment_window(
        self, frames: torch.Tensor, text: Sequence[str], state: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One window of a longer video, continuing from ``state`` (the previous window's prompt tokens, None
        for the first window): the released clip-by-clip inference, so a video streams window by window.

        Returns mask logits [B, T, S, S], scores [B, T] (highest foreground probability per frame) and the new
        state [B, Pm, Dv].
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        if state is not None and (not isinstance(state, torch.Tensor) or state.shape[0] != len(texts)):
            raise InvalidInputError(
                f"state must be the prompt tokens [B={len(texts)}, ...] returned for the previous window of the same "
                "expressions; pass None to start a video"
            )
        out = self._run(self._square(frames.to(self.device)), texts, state)
        logits = out["pred_masks"]
        scores = logits.flatten(2).amax(-1).float().sigmoid()
        return logits, scores, out["prompt_token"]

    @torch.no_grad()
    def segment(self, frames: torch.Tensor, text: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The released inference (``infer_ytvos.py``): square resize to ``image_size``, consecutive clips of
        ``clip_frames`` with prompt tokens carried, sigmoid > 0.5 (logit > 0) per frame.

        Returns mask logits [B, T, S, S] and scores [B, T].
        """
        texts = validate_texts(text)
        logits, scores, _ = self.segment_window(frames, texts, None)
        return logits, scores

"""VLP-RVOS configuration (round-trips through config.json).

The authors released no model code and no configs (see docs/models/vlp_rvos.md), so every size below is either a
fact of the released scripts (``image_size`` 352, ImageNet mean/std, 6-frame clips, the CLIP/VLMo backbone sizes)
or lvseg's choice, named in the field's description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ..base import ModelConfig, PreprocessConfig, check_ranges

__all__ = [
    "VLPRVOSConfig",
    "CLIP_SIZES",
    "clip_backbone",
    "vlp_rvos_preprocessing",
    "BACKBONES",
    "tiny_config",
    "vlmo_backbone",
    "VLMO_SIZES",
]

BACKBONES = ("clip", "vlmo")

# OpenAI CLIP sizes (openai/CLIP model.py build_model, read from the published state dicts' shapes): vision
# (width, layers, heads, patch), text (width, layers, heads), joint projection width
CLIP_SIZES: dict[str, dict[str, Any]] = {
    "ViT-B/16": {"vision": (768, 12, 12, 16), "text": (512, 12, 8), "projection_dim": 512},
    "ViT-L/14": {"vision": (1024, 24, 16, 14), "text": (768, 12, 12), "projection_dim": 768},
}


def clip_backbone(name: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(vision, text, projection_dim)`` of an OpenAI CLIP model: ``transformers.CLIPVisionConfig`` /
    ``CLIPTextConfig`` arguments (QuickGELU, 224-px position table, 77 text positions, vocabulary 49408)."""
    if name not in CLIP_SIZES:
        raise ConfigError(f"unknown CLIP backbone {name!r}; use one of {', '.join(CLIP_SIZES)}")
    sizes = CLIP_SIZES[name]
    width, layers, heads, patch = sizes["vision"]
    vision = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
        "image_size": 224,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    t_width, t_layers, t_heads = sizes["text"]
    text = {
        "hidden_size": t_width,
        "intermediate_size": 4 * t_width,
        "num_hidden_layers": t_layers,
        "num_attention_heads": t_heads,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    return vision, text, int(sizes["projection_dim"])


# VLMo (microsoft/unilm vlmo): one multiway transformer for both modalities (shared attention, an expert FFN per
# modality), so text width/depth/heads equal the vision ones; BERT uncased vocabulary, 40 text positions; the
# retrieval heads project to the hidden width. (width, layers, heads, first block with a VL expert)
VLMO_SIZES: dict[str, tuple[int, int, int, int]] = {"base": (768, 12, 12, 10), "large": (1024, 24, 16, 21)}


def vlmo_backbone(name: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(vision, text, projection_dim)`` sizes of VLMo-``name`` (``"base"`` or ``"large"``, patch 16)."""
    if name not in VLMO_SIZES:
        raise ConfigError(f"unknown VLMo backbone {name!r}; use one of {', '.join(VLMO_SIZES)}")
    width, layers, heads, vlffn_start = VLMO_SIZES[name]
    common = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "layer_norm_eps": 1e-6,
    }
    vision = {**common, "patch_size": 16, "image_size": 384, "vlffn_start": vlffn_start}
    text = {**common, "vocab_size": 30522, "max_position_embeddings": 40}
    return vision, text, width


def vlp_rvos_preprocessing(image_size: int = 352, clip_frames: int = 6, max_text_tokens: int = 40) -> PreprocessConfig:
    """Frames reach :meth:`VLPRVOS.segment` with their aspect kept (short side ``image_size``); ``segment`` then
    resizes them to ``image_size`` x ``image_size`` as the released ``infer_ytvos.py`` does (aspect not kept,
    ImageNet mean/std). One Predictor window is one clip, so prompt tokens pass from clip to clip."""
    return PreprocessConfig(
        short_side=image_size,
        max_size=max(image_size, 640),
        window=clip_frames,
        overlap=0,
        max_text_tokens=max_text_tokens,
    )


_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass
class VLPRVOSConfig(ModelConfig):
    """All sizes of a VLP-RVOS model.

    Backbone (frozen): ``backbone`` ``"clip"`` (transformers' ``CLIPModel`` built from ``vision`` / ``text``
    (``CLIPVisionConfig`` / ``CLIPTextConfig`` arguments) and ``projection_dim``) or ``"vlmo"`` (a multiway
    transformer plugged in through :class:`~lvseg.models.vlp_rvos.modules.VLBackbone`).

    Temporal-aware prompt tuning: a prompt encoder (``prompt_layers`` transformer layers of width ``hidden_dim``)
    turns learnable language (``text_prompts``), vision (``vision_prompts``) and temporal (``temporal_prompts``)
    tokens, together with the clip's historical tokens, into the prompts of this clip. Language prompts go after the
    start token of the text encoder's input; every frame's token sequence is ``[CLS, patches, history, vision
    prompts, temporal prompts]``. ``deep_prompt_layers``: vision layers (> 0) where a learnable per-layer offset is
    added to the vision prompts. ``temporal_layers``: layers after which parameter-reusing temporal capture updates
    the temporal prompts with that layer's frozen attention over the whole clip. The clip's temporal prompts
    (mean over frames, projected) are the ``prompt_token`` the next clip receives as history (``history_tokens`` =
    ``temporal_prompts`` of them); ``detach_history`` stops gradients between clips, as two optimiser steps do.

    Reference-guided encoding: in ``guide_layers`` a learnable cross-attention (``guide_heads``) to the text
    encoder's output runs parallel to the frozen self-attention, behind a zero-initialised tanh gate.

    After extraction: ``extract_layers`` are tapped (0-based); the first tap gives the shallow features. VL feature
    fusion (``fusion_layers`` dual-propagation layers), then ``str_layers`` spatial-temporal reasoning steps
    (cube-frame attention over ``cube_size`` = (t, h, w) cubes and per-frame summary tokens, plus a decoder whose
    queries are the shallow features and keys the words), width ``hidden_dim``, ``num_heads`` heads, ``ffn_dim``.
    ``volume_position`` adds a fixed sinusoidal embedding of each token's (row, column, frame in the clip) to the
    fused volume before spatial-temporal reasoning, so that its values, not only its attention weights, carry
    where and when a token is (lvseg's option; off by default, parameter-free). ``volume_motion`` = r > 0 adds
    where each token's content was one frame earlier: a local correlation with the previous frame's tokens in a
    (2r + 1)^2 window, projected (:class:`~lvseg.models.vlp_rvos.modules.LocalMotion`; lvseg's option, off by
    default). With ``motion_before_fusion`` it is computed on the visual tokens (the summed taps) and added before
    the VL feature fusion instead, so that the fusion's attention between the tokens and the words sees it.
    The released ``Segmentor`` (``segmentor_dim`` channels) decodes the fused map and the pixel-text similarity map
    to one mask per frame at ``image_size``.
    """

    architecture: str = "vlp_rvos"
    preprocessing: PreprocessConfig = field(default_factory=vlp_rvos_preprocessing)
    backbone: str = "clip"
    vision: dict[str, Any] = field(default_factory=lambda: clip_backbone("ViT-B/16")[0])
    text: dict[str, Any] = field(default_factory=lambda: clip_backbone("ViT-B/16")[1])
    projection_dim: int = 512
    image_size: int = 352
    clip_frames: int = 6
    text_prompts: int = 37
    vision_prompts: int = 10
    temporal_prompts: int = 4
    prompt_layers: int = 1
    deep_prompt_layers: tuple[int, ...] = tuple(range(1, 12))
    temporal_layers: tuple[int, ...] = tuple(range(12))
    guide_layers: tuple[int, ...] = tuple(range(12))
    guide_heads: int = 8
    extract_layers: tuple[int, ...] = (3, 7, 9, 11)
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    fusion_layers: int = 1
    str_layers: int = 4
    cube_size: tuple[int, int, int] = (2, 8, 8)
    segmentor_dim: int = 256
    volume_position: bool = False
    volume_motion: int = 0
    motion_before_fusion: bool = False
    detach_history: bool = True

    # may be absent from a config.json (see ModelConfig.optional_fields): runtime switches, and fields added later
    # whose default is the earlier architecture
    optional_fields: ClassVar[tuple[str, ...]] = (
        "detach_history",
        "volume_position",
        "volume_motion",
        "motion_before_fusion",
    )

    @property
    def num_layers(self) -> int:
        return int(self.vision["num_hidden_layers"])

    @property
    def vision_dim(self) -> int:
        return int(self.vision["hidden_size"])

    @property
    def text_dim(self) -> int:
        return int(self.text["hidden_size"])

    @property
    def patch_size(self) -> int:
        return int(self.vision["patch_size"])

    @property
    def max_text_tokens(self) -> int:
        """Tokens of an expression (start and end included) that fit beside the language prompts."""
        return int(self.text.get("max_position_embeddings", 77)) - self.text_prompts

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "projection_dim": (1, None),
                "image_size": (16, None),
                "clip_frames": (1, None),
                "text_prompts": (0, None),
                "vision_prompts": (0, None),
                "temporal_prompts": (1, None),
                "prompt_layers": (0, None),
                "deep_prompt_layers": (1, None),
                "temporal_layers": (0, None),
                "guide_layers": (0, None),
                "guide_heads": (1, None),
                "extract_layers": (0, None),
                "hidden_dim": (8, None),
                "num_heads": (1, None),
                "ffn_dim": (1, None),
                "dropout": (0.0, 1.0),
                "fusion_layers": (0, None),
                "str_layers": (0, None),
                "cube_size": (1, None),
                "volume_motion": (0, None),
                "segmentor_dim": (8, None),
            },
        )
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown VLP-RVOS backbone {self.backbone!r}; use one of {', '.join(BACKBONES)}")
        for name, keys, part in (("vision", _VISION_KEYS, self.vision), ("text", _TEXT_KEYS, self.text)):
            if not isinstance(part, dict):
                raise ConfigError(f"config field {name!r} must be an object of backbone sizes, got {part!r}")
            missing = [k for k in keys if k not in part]
            if missing:
                raise ConfigError(f"config field {name!r} lacks {missing}: give every size of the {name} tower")
        if self.backbone == "vlmo":
            shared = ("hidden_size", "num_hidden_layers", "num_attention_heads")
            if any(self.vision[k] != self.text.get(k) for k in shared) or self.projection_dim != self.vision_dim:
                raise ConfigError(
                    "VLMo is one multiway transformer: text and vision need the same hidden_size, "
                    "num_hidden_layers and num_attention_heads, and projection_dim equal to that width"
                )
        if self.motion_before_fusion and not self.volume_motion:
            raise ConfigError(
                "motion_before_fusion places the LocalMotion module, which volume_motion = 0 turns off: "
                "set volume_motion to a radius >= 1, or motion_before_fusion to False"
            )
        layers = self.num_layers
        for name in ("deep_prompt_layers", "temporal_layers", "guide_layers", "extract_layers"):
            bad = [i for i in getattr(self, name) if i >= layers]
            if bad:
                raise ConfigError(f"{name} {bad} are not layers of a {layers}-layer vision encoder (0-based)")
        if not self.extract_layers or list(self.extract_layers) != sorted(set(self.extract_layers)):
            raise ConfigError(f"extract_layers must be increasing and not empty, got {self.extract_layers}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} must be a multiple of the patch size {self.patch_size} "
                "(the released scripts use 352 for /16 and 336 for /14)"
            )
        for width, heads, what in (
            (self.hidden_dim, self.num_heads, "hidden_dim and num_heads"),
            (self.vision_dim, self.guide_heads, "the vision width and guide_heads"),
            (self.vision_dim, int(self.vision["num_attention_heads"]), "the vision width and its heads"),
        ):
            if width % heads:
                raise ConfigError(f"{what} do not fit: {width} channels are not a multiple of {heads} heads")
        if self.segmentor_dim % 8 or self.segmentor_dim < 16:
            raise ConfigError(f"segmentor_dim={self.segmentor_dim} must be a multiple of 8 and >= 16 (GroupNorm(8))")
        if self.max_text_tokens < 3:
            raise ConfigError(
                f"text_prompts={self.text_prompts} leave {self.max_text_tokens} of the text encoder's "
                f"{self.text.get('max_position_embeddings', 77)} positions to the expression; use fewer prompts"
            )
        if self.preprocessing.max_text_tokens > self.max_text_tokens:
            raise ConfigError(
                f"preprocessing.max_text_tokens={self.preprocessing.max_text_tokens} exceeds the "
                f"{self.max_text_tokens} positions left beside {self.text_prompts} language prompts"
            )


def tiny_config(vocab_size: int, image_size: int = 96, clip_frames: int = 4, **changes: Any) -> VLPRVOSConfig:
    """A small VLP-RVOS (CLIP-style towers of width 64, 4 vision and 2 text layers, patch 8) for tests and the
    Shapes world: every part of the full model at a CPU size. ``changes`` override any field."""
    vision = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "patch_size": 8,
        "image_size": image_size,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    text = {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 40,
        "vocab_size": vocab_size,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,  # the RoBERTa-style ids of lvseg's BPE tokenizers (unused by the model)
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    fields: dict[str, Any] = dict(
        preprocessing=vlp_rvos_preprocessing(image_size, clip_frames, max_text_tokens=24),
        vision=vision,
        text=text,
        projection_dim=32,
        image_size=image_size,
        clip_frames=clip_frames,
        text_prompts=8,
        vision_prompts=4,
        temporal_prompts=2,
        deep_prompt_layers=(1, 2, 3),
        temporal_layers=(0, 1, 2, 3),
        guide_layers=(0, 1, 2, 3),
        guide_heads=4,
        extract_layers=(0, 1, 2, 3),
        hidden_dim=32,
        num_heads=4,
        ffn_dim=64,
        dropout=0.0,
        str_layers=2,
        cube_size=(2, 4, 4),
        segmentor_dim=32,
    )
    fields.update(changes)
    return VLPRVOSConfig(**fields)

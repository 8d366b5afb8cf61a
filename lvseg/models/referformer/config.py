"""ReferFormer configuration (round-trips through config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ..base import ModelConfig, PreprocessConfig, check_ranges
from ..layers.text import ROBERTA_BASE_CONFIG, check_text_encoder, complete_text_encoder

__all__ = ["ReferFormerConfig", "SwinConfig", "BACKBONES", "SWIN_PRESETS", "PROTOCOLS"]

RESNETS = ("resnet50", "resnet101")

# name -> (embed_dim, depths, num_heads, drop_path_rate); official swin_*_p4w7 / video_swin_*_p4w7 configs
SWIN_PRESETS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], float]] = {
    "swin-t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "swin-s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 0.2),
    "swin-b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 0.3),
    "swin-l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 0.3),
    "video-swin-t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "video-swin-s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 0.2),
    "video-swin-b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 0.2),
}
# "swin" / "video-swin": custom sizes given in the ``swin`` section (e.g. small test models)
BACKBONES = RESNETS + tuple(SWIN_PRESETS) + ("swin", "video-swin")
# "timm": any timm CNN named by ``timm_model`` (features_only, built without pretrained weights), e.g. small
# models trained from scratch; ``temporal_kernel`` > 0 mixes its features across frames
BACKBONES = (*BACKBONES, "timm")

# Ref-YouTube-VOS: one query for the whole video (frame-averaged score); Ref-DAVIS: the same per 36-frame clip;
# frame: the best query of every frame on its own (A2D/JHMDB annotated frame, RefCOCO images).
PROTOCOLS = ("ytvos", "davis", "frame")

# How the sentence feature (the decoder queries' content) is made from the text encoder: "pooler" = RoBERTa's
# pooler output (every official checkpoint); "mean" = the mean of the word features, for small text encoders
# trained from scratch, whose <s> token learns to summarise the sentence only slowly.
SENTENCE_POOLING = ("pooler", "mean")
# Where the decoder's reference points start: "learned" = one fixed point per query (every official checkpoint);
# "text" = the soft-argmax of the sentence query's attention over the first encoder level, so that even a single
# query starts on the referred object (a Deformable-DETR decoder samples only near its reference points).
QUERY_REFERENCE = ("learned", "text")


@dataclass
class SwinConfig:
    """Swin / Video-Swin sizes; ``window`` is (Wd, Wh, Ww): (1, 7, 7) for 2-D Swin, (8, 7, 7) for Video Swin."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window: tuple[int, ...] = (1, 7, 7)
    drop_path_rate: float = 0.2

    optional_fields: ClassVar[tuple[str, ...]] = ()  # every size is required in a config.json

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "embed_dim": (1, None),
                "depths": (1, None),
                "num_heads": (1, None),
                "window": (1, None),
                "drop_path_rate": (0.0, 1.0),
            },
        )
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ConfigError(
                f"swin needs one depth and one head count per stage, got depths={self.depths} and "
                f"num_heads={self.num_heads}"
            )
        if len(self.window) != 3:
            raise ConfigError(f"swin window must be (Wd, Wh, Ww), got {self.window}")


def _ytvos_preprocessing() -> PreprocessConfig:
    # Ref-YouTube-VOS inference: short side 360 (max 640 for the usual 16:9 and 4:3 videos), ImageNet stats.
    # window 0: the Predictor hands the whole video to segment(), which links passes itself (max_frames_per_pass)
    return PreprocessConfig(short_side=360, max_size=640, window=36, overlap=0, max_text_tokens=512)


@dataclass
class ReferFormerConfig(ModelConfig):
    """All sizes of a ReferFormer model. Defaults are those of every released checkpoint (ResNet-50 shown).

    ``text_encoder`` holds ``transformers.RobertaConfig`` arguments (roberta-base by default); the model is
    built from them with random weights, and the checkpoint provides all weights (pooler included).
    ``protocol`` is the inference protocol of :meth:`ReferFormer.segment` (see ``PROTOCOLS``);
    ``sentence_pooling`` is ``"pooler"`` (official) or ``"mean"`` (see ``SENTENCE_POOLING``);
    ``max_frames_per_pass`` > 0 runs longer clips in passes of that many frames and still picks one query for
    the whole clip by the Ref-YouTube-VOS rule; 0 = one pass whatever the length (the paper's protocol, which
    needs about 24 GB for a typical Ref-YouTube-VOS video). ``fused_attention`` runs the standard attention
    layers through PyTorch's fused kernels: less memory and time for long clips, but results differ from the
    official code by float rounding (~1e-6 relative) instead of matching it bit for bit. ``mask_refine`` > 0
    adds lvseg's image-guided refinement of the mask features to stride 1 (that many channels,
    :class:`~lvseg.models.referformer.fpn.MaskRefiner`): masks at the input resolution instead of the official
    stride 4 (see :attr:`mask_stride`); 0 = the official head.
    """

    architecture: str = "referformer"
    preprocessing: PreprocessConfig = field(default_factory=_ytvos_preprocessing)
    backbone: str = "resnet50"
    swin: SwinConfig | None = None
    hidden_dim: int = 256
    num_queries: int = 5
    enc_layers: int = 4
    dec_layers: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    nheads: int = 8
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_classes: int = 1
    mask_dim: int = 256
    controller_layers: int = 3
    dynamic_mask_channels: int = 8
    rel_coord: bool = True
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(ROBERTA_BASE_CONFIG))
    protocol: str = "ytvos"
    davis_clip_frames: int = 36
    max_frames_per_pass: int = 36
    gradient_checkpointing: bool = False
    fused_attention: bool = False
    timm_model: str = ""
    temporal_kernel: int = 0
    sentence_pooling: str = "pooler"
    query_reference: str = "learned"
    mask_refine: int = 0

    # may be absent from a config.json (see ModelConfig.optional_fields): swin is derived from a preset backbone;
    # the others came after the first release with the official behaviour as default, or are runtime switches
    optional_fields: ClassVar[tuple[str, ...]] = (
        "swin",
        "gradient_checkpointing",
        "fused_attention",
        "timm_model",
        "temporal_kernel",
        "sentence_pooling",
        "query_reference",
        "mask_refine",
    )

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """A config.json must give every size of its text encoder (RobertaConfig would default a missing one)."""
        if "text_encoder" in data:
            check_text_encoder(data["text_encoder"], require_sizes=True)

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "hidden_dim": (1, None),
                "num_queries": (1, None),
                "enc_layers": (1, None),
                "dec_layers": (1, None),
                "dim_feedforward": (1, None),
                "dropout": (0.0, 1.0),
                "nheads": (1, None),
                "num_feature_levels": (1, None),
                "enc_n_points": (1, None),
                "dec_n_points": (1, None),
                "num_classes": (1, None),
                "mask_dim": (1, None),
                "controller_layers": (2, None),
                "dynamic_mask_channels": (1, None),
                "davis_clip_frames": (1, None),
                "max_frames_per_pass": (0, None),
                "temporal_kernel": (0, None),
                "mask_refine": (0, None),
            },
        )
        check_text_encoder(self.text_encoder)
        self.text_encoder = complete_text_encoder(self.text_encoder)
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown ReferFormer backbone {self.backbone!r}; use one of {', '.join(BACKBONES)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if self.num_feature_levels != 4:
            raise ConfigError("ReferFormer needs num_feature_levels=4 (3 backbone levels + 1 extra)")
        if self.controller_layers < 2:
            raise ConfigError("controller_layers must be >= 2")
        if self.hidden_dim % 32 or self.hidden_dim % self.nheads:
            raise ConfigError(f"hidden_dim={self.hidden_dim} must be a multiple of 32 and of nheads={self.nheads}")
        if self.max_frames_per_pass < 0 or self.davis_clip_frames <= 0:
            raise ConfigError("max_frames_per_pass must be >= 0 and davis_clip_frames > 0")
        if self.swin is None and self.backbone in SWIN_PRESETS:
            dim, depths, heads, dpr = SWIN_PRESETS[self.backbone]
            window = (8, 7, 7) if self.backbone.startswith("video") else (1, 7, 7)
            self.swin = SwinConfig(dim, depths, heads, window, dpr)
        if self.swin is None and self.backbone in ("swin", "video-swin"):
            raise ConfigError(f"backbone {self.backbone!r} needs a 'swin' section with its sizes")
        if self.backbone == "timm" and not self.timm_model:
            raise ConfigError("backbone 'timm' needs timm_model, a timm model name such as 'test_convnext'")
        if self.backbone != "timm" and (self.timm_model or self.temporal_kernel):
            raise ConfigError(f"timm_model/temporal_kernel apply to backbone 'timm' only, not {self.backbone!r}")
        if self.sentence_pooling not in SENTENCE_POOLING:
            raise ConfigError(
                f"unknown sentence_pooling {self.sentence_pooling!r}; use one of {', '.join(SENTENCE_POOLING)}"
            )
        if self.query_reference not in QUERY_REFERENCE:
            raise ConfigError(
                f"unknown query_reference {self.query_reference!r}; use one of {', '.join(QUERY_REFERENCE)}"
            )
        if self.mask_refine < 0:
            raise ConfigError(f"mask_refine must be >= 0 (0 = the official stride-4 masks), got {self.mask_refine}")
        if self.swin is not None and self.backbone in RESNETS:
            raise ConfigError(f"backbone {self.backbone!r} is a ResNet: remove the 'swin' section")

    @property
    def mask_stride(self) -> int:
        """Input pixels per mask cell: 4 (official), 1 with ``mask_refine``."""
        return 1 if self.mask_refine else 4

    @property
    def is_video_backbone(self) -> bool:
        return self.backbone.startswith("video")

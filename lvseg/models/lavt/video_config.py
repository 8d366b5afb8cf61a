"""LAVT video model (``lavt_video``) configuration (round-trips through config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ..base import ModelConfig, PreprocessConfig, check_ranges
from ..layers.text import BERT_BASE_CONFIG
from .config import VIDEO_TOKEN_BUDGET, check_raw_bert_encoder, checked_bert_encoder

__all__ = ["LAVTVideoConfig", "VIDEO_SWIN_SIZES", "video_preprocessing", "A2D_CLIP_FRAMES", "STREAMING_WINDOW"]

# swin_type -> (embed_dim, depths, heads, drop_path_rate) of the official video model (tiny/small/base only)
VIDEO_SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], float]] = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 0.1),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 0.2),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 0.3),
}

# The official A2D-Sentences test clip (`--clip_length 16` in the README command).
A2D_CLIP_FRAMES = 16
# The Predictor's default window for user videos: every Ref-YouTube-VOS validation video (at most 36 annotated
# frames) then runs as one clip, as the official test does, and longer videos run in independent 36-frame clips.
STREAMING_WINDOW = 36


def video_preprocessing() -> PreprocessConfig:
    """Frames reach :meth:`LAVTVideo.segment` with their aspect kept (short side 480, long side at most 960);
    ``segment`` resizes them to ``image_size`` x ``image_size`` as the official tests do. The Predictor runs
    videos in clips of :data:`STREAMING_WINDOW` frames (see :class:`LAVTVideo` for the policy)."""
    return PreprocessConfig(
        short_side=480, max_size=960, window=STREAMING_WINDOW, overlap=0, max_text_tokens=VIDEO_TOKEN_BUDGET
    )


@dataclass
class LAVTVideoConfig(ModelConfig):
    """All sizes of the LAVT video model (Yxxxb/LAVT-RS ``lavt_video``, released flags ``--sep_t_pwam
    --conv3d_kernel_size_t 3-3-3 --conv3d_kernel_size_s 1-1-1 --w_t3x3_s1x1 --mm_t3x3_s1x1``).

    Backbone: Video Swin (patch 1x4x4, ``window`` (Wd, Wh, Ww), each dimension shrunk to the feature size when it
    is not larger, as in Video Swin) with a separable 3-D PWAM and a language gate after the blocks of every stage.
    ``temporal_kernel`` / ``spatial_kernel``: the Conv3d kernels of the PWAM's "t" and "s" branches (odd sizes,
    zero padding ``k // 2``: official ``--conv3d_kernel_size_t`` / ``_s``). ``fusion_heads``: PWAM heads per stage
    (``--mha``). ``last_stage_gate``: whether the checkpoint has the last stage's language gate (models trained
    with ``--use_checkpoint`` do not; its output is never used, so both give the same results).
    ``annotated_clip_frames``: frames of the A2D-Sentences test clip around the annotated frame.
    ``fused_attention`` selects SDPA window attention (same math up to rounding, less memory); the default
    ``False`` is the eager path, which computes what the official code computes bit for bit.
    """

    architecture: str = "lavt_video"
    preprocessing: PreprocessConfig = field(default_factory=video_preprocessing)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window: tuple[int, int, int] = (8, 7, 7)
    temporal_kernel: tuple[int, int, int] = (3, 3, 3)
    spatial_kernel: tuple[int, int, int] = (1, 1, 1)
    fusion_heads: tuple[int, ...] = (1, 1, 1, 1)
    fusion_dropout: float = 0.0
    drop_path_rate: float = 0.1
    last_stage_gate: bool = True
    image_size: int = 480
    annotated_clip_frames: int = A2D_CLIP_FRAMES
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_CONFIG))
    fused_attention: bool = False

    # runtime switches only (see ModelConfig.optional_fields)
    optional_fields: ClassVar[tuple[str, ...]] = ("fused_attention",)

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """A config.json must give every size of its text encoder (BertConfig would default a missing one)."""
        check_raw_bert_encoder(data)

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "embed_dim": (1, None),
                "depths": (1, None),
                "num_heads": (1, None),
                "window": (1, None),
                "temporal_kernel": (1, None),
                "spatial_kernel": (1, None),
                "fusion_heads": (1, None),
                "fusion_dropout": (0.0, 1.0),
                "drop_path_rate": (0.0, 1.0),
                "image_size": (32, None),
                "annotated_clip_frames": (1, None),
            },
        )
        self.text_encoder = checked_bert_encoder(self.text_encoder)
        if len(self.depths) != 4 or len(self.num_heads) != 4 or len(self.fusion_heads) != 4:
            raise ConfigError(
                f"LAVT's Video Swin has 4 stages: depths, num_heads and fusion_heads need 4 entries each, got "
                f"{self.depths}, {self.num_heads} and {self.fusion_heads}"
            )
        for name in ("window", "temporal_kernel", "spatial_kernel"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{name} needs 3 entries (time, height, width), got {getattr(self, name)}")
        for name in ("temporal_kernel", "spatial_kernel"):
            if any(k % 2 == 0 for k in getattr(self, name)):
                raise ConfigError(
                    f"{name}={getattr(self, name)} must have odd sizes (the PWAM's Conv3d keeps the map size with "
                    "zero padding k // 2), e.g. (3, 3, 3) or (1, 1, 1)"
                )
        for i, (heads, fusion) in enumerate(zip(self.num_heads, self.fusion_heads)):
            dim = self.embed_dim * 2**i
            if dim % heads or dim % fusion:
                raise ConfigError(
                    f"stage {i} has {dim} channels, not a multiple of num_heads={heads} and fusion_heads={fusion}"
                )
        if self.embed_dim % 4:
            raise ConfigError(f"embed_dim={self.embed_dim} must be a multiple of 4 (the decoder halves 8C thrice)")

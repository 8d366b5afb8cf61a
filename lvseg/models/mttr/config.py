"""MTTR configuration (round-trips through config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ..base import ModelConfig, PreprocessConfig, check_ranges
from ..layers.text import ROBERTA_BASE_CONFIG, check_text_encoder, complete_text_encoder

__all__ = ["MTTRConfig", "PROTOCOLS", "demo_preprocessing", "a2d_preprocessing"]

# ytvos: one query for the whole clip (argmax of the time-averaged referred probability; Ref-YouTube-VOS);
# frame: the best query of every frame on its own (the top-one rule of the A2D/JHMDB IoU metrics).
PROTOCOLS = ("ytvos", "frame")


def demo_preprocessing() -> PreprocessConfig:
    """The official demo (Colab / Space) settings: 24-frame windows overlapping by 6, short side 360, max 640."""
    return PreprocessConfig(short_side=360, max_size=640, window=24, overlap=6, max_text_tokens=512)


def a2d_preprocessing(window: int = 10) -> PreprocessConfig:
    """A2D-/JHMDB-Sentences evaluation settings: short side 320, max 576, ``window`` frames."""
    return PreprocessConfig(short_side=320, max_size=576, window=window, overlap=0, max_text_tokens=512)


@dataclass
class MTTRConfig(ModelConfig):
    """All sizes of an MTTR model; the defaults are those of the three released checkpoints.

    Backbone: Video Swin-T with a (1, 4, 4) patch and its first three stages only (``depths``/``num_heads``
    list those three stages). ``drop_path_rate`` is the rate of the last of these blocks: the official code
    spreads 0 -> 0.1 over all four stages (12 blocks), so block 10 gets 0.1 * 9 / 11.
    ``text_encoder`` holds ``transformers.RobertaConfig`` arguments (roberta-base); the model is built from
    them with random weights and the checkpoint provides every weight.
    ``fused_attention`` selects the fast attention (SDPA) for the Video Swin windows and the multimodal
    transformer; ``False`` is the eager reference path (same math, kept for the speed comparison in
    ``benchmarks/mttr_speed.py``): explicit ``softmax(q k^T) v`` in the order of the official code, which it
    reproduces bit for bit on CPU.
    """

    architecture: str = "mttr"
    preprocessing: PreprocessConfig = field(default_factory=demo_preprocessing)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6)
    num_heads: tuple[int, ...] = (3, 6, 12)
    swin_window: tuple[int, int, int] = (8, 7, 7)
    drop_path_rate: float = 0.1 * 9 / 11
    d_model: int = 256
    nheads: int = 8
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 50
    mask_kernels_dim: int = 8
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(ROBERTA_BASE_CONFIG))
    freeze_text_encoder: bool = True
    lowercase_text: bool = True
    protocol: str = "ytvos"
    fused_attention: bool = True

    # may be absent from a config.json (see ModelConfig.optional_fields): runtime/training switches only
    optional_fields: ClassVar[tuple[str, ...]] = ("fused_attention", "freeze_text_encoder")

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """A config.json must give every size of its text encoder (RobertaConfig would default a missing one)."""
        if "text_encoder" in data:
            check_text_encoder(data["text_encoder"], require_sizes=True)

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "embed_dim": (1, None),
                "depths": (1, None),
                "num_heads": (1, None),
                "swin_window": (1, None),
                "drop_path_rate": (0.0, 1.0),
                "d_model": (1, None),
                "nheads": (1, None),
                "num_encoder_layers": (1, None),
                "num_decoder_layers": (1, None),
                "dim_feedforward": (1, None),
                "dropout": (0.0, 1.0),
                "num_queries": (1, None),
                "mask_kernels_dim": (1, None),
            },
        )
        check_text_encoder(self.text_encoder)
        self.text_encoder = complete_text_encoder(self.text_encoder)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown MTTR protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if len(self.depths) != 3 or len(self.num_heads) != 3:
            raise ConfigError(
                f"MTTR uses the first three Video Swin stages: depths and num_heads need 3 entries, got "
                f"{self.depths} and {self.num_heads}"
            )
        if len(self.swin_window) != 3:
            raise ConfigError(f"swin_window must be (Wd, Wh, Ww), got {self.swin_window}")
        if self.d_model % self.nheads or self.d_model % 64:
            # the spatial decoder narrows d_model to d_model / 8 channels with GroupNorm(8)
            raise ConfigError(f"d_model={self.d_model} must be a multiple of 64 and of nheads={self.nheads}")
        if self.num_queries < 1 or self.mask_kernels_dim < 1:
            raise ConfigError("num_queries and mask_kernels_dim must be >= 1")

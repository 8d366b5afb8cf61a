"""LAVT configuration (round-trips through config.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ..base import ModelConfig, PreprocessConfig, check_ranges
from ..layers.text import BERT_BASE_CONFIG, check_text_encoder, complete_text_encoder, is_bert

__all__ = [
    "LAVTConfig",
    "SWIN_SIZES",
    "IMAGE_TOKEN_BUDGET",
    "VIDEO_TOKEN_BUDGET",
    "refcoco_preprocessing",
    "check_raw_bert_encoder",
    "checked_bert_encoder",
]

# swin_type -> (embed_dim, depths, heads), as in the official code (video: tiny/small/base only)
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}

# the official token budgets: ids after [CLS]/[SEP] are added, cut to this many (a long sentence loses [SEP])
IMAGE_TOKEN_BUDGET = 20
VIDEO_TOKEN_BUDGET = 22


def check_raw_bert_encoder(data: dict[str, Any]) -> None:
    """A LAVT config.json (image or video) must give every size of its text encoder (BertConfig would default
    a missing one)."""
    if "text_encoder" in data:
        check_text_encoder(data["text_encoder"], require_sizes=True)


def checked_bert_encoder(text_encoder: dict[str, Any]) -> dict[str, Any]:
    """The ``text_encoder`` of a LAVT config (image or video), validated as BertConfig arguments of a BERT and
    with every size BertConfig would default written out (``complete_text_encoder``), for a complete config.json.

    Raises :class:`~lvseg.errors.ConfigError` for invalid arguments or a text encoder that is not BERT.
    """
    check_text_encoder(text_encoder)
    if not is_bert(text_encoder):
        raise ConfigError(f"LAVT's text encoder is BERT: text_encoder needs model_type 'bert', got {text_encoder!r}")
    return complete_text_encoder(text_encoder)


def refcoco_preprocessing() -> PreprocessConfig:
    """Frames reach :meth:`LAVT.segment` with their aspect kept (short side 480, long side at most 960);
    ``segment`` then resizes them to ``image_size`` x ``image_size`` as the official test does (aspect not kept).
    Image models run frame by frame, so windows only bound memory (16 frames)."""
    return PreprocessConfig(short_side=480, max_size=960, window=16, overlap=0, max_text_tokens=IMAGE_TOKEN_BUDGET)


@dataclass
class LAVTConfig(ModelConfig):
    """All sizes of a LAVT image model (``lavt`` and ``lavt_one`` are this one network).

    Backbone: 2-D Swin (patch 4, ``window`` 7 or 12, never shrunk; padding after norm1) with a PWAM and a
    language gate after the blocks of every stage; ``fusion_heads`` are the PWAM heads per stage (official
    ``--mha``, default 1-1-1-1; shapes cannot tell them). Decoder: SimpleDecoding on LayerNorm(PWAM output).
    ``text_encoder`` holds ``transformers.BertConfig`` arguments (bert-base-uncased, no pooler).
    ``image_size``: frames are resized to this square before the network (official 480, aspect not kept).
    ``variant`` records which official layout the weights came from (``lavt``: BERT in its own dict;
    ``lavt_one``: BERT inside the model); both run the same network.
    ``fused_attention`` selects SDPA window attention (same math up to rounding); the default ``False`` is the
    eager path, which gives the official outputs bit for bit (LAVT's instance norms amplify rounding: SDPA moved
    random-weight Swin-B logits by 7.5e-4, see docs/models/lavt.md).
    """

    architecture: str = "lavt"
    preprocessing: PreprocessConfig = field(default_factory=refcoco_preprocessing)
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window: int = 12
    fusion_heads: tuple[int, ...] = (1, 1, 1, 1)
    fusion_dropout: float = 0.0
    drop_path_rate: float = 0.3
    image_size: int = 480
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_CONFIG))
    variant: str = "lavt"
    fused_attention: bool = False

    # runtime switches only (see ModelConfig.optional_fields)
    optional_fields: ClassVar[tuple[str, ...]] = ("fused_attention",)
    variants: ClassVar[tuple[str, ...]] = ("lavt", "lavt_one")

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
                "fusion_heads": (1, None),
                "fusion_dropout": (0.0, 1.0),
                "drop_path_rate": (0.0, 1.0),
                "image_size": (32, None),
            },
        )
        self.text_encoder = checked_bert_encoder(self.text_encoder)
        if len(self.depths) != 4 or len(self.num_heads) != 4 or len(self.fusion_heads) != 4:
            raise ConfigError(
                f"LAVT's Swin has 4 stages: depths, num_heads and fusion_heads need 4 entries each, got "
                f"{self.depths}, {self.num_heads} and {self.fusion_heads}"
            )
        for i, (heads, fusion) in enumerate(zip(self.num_heads, self.fusion_heads)):
            dim = self.embed_dim * 2**i
            if dim % heads or dim % fusion:
                raise ConfigError(
                    f"stage {i} has {dim} channels, not a multiple of num_heads={heads} and fusion_heads={fusion}"
                )
        if self.embed_dim % 4:
            raise ConfigError(f"embed_dim={self.embed_dim} must be a multiple of 4 (the decoder halves 8C thrice)")
        if self.variant not in self.variants:
            raise ConfigError(f"unknown LAVT variant {self.variant!r}; use one of {', '.join(self.variants)}")

"""Locater configuration (round-trips through config.json).

The two memory settings of the official code (leonnnop/Locater) are the fields ``local_mem_size`` and
``global_mem_size``, in multiples of the tokens of one frame (``(image_size / patch_size) ** 2``, 400 at 320 px):

* ``HEAD_MEMORY`` = (2.0, 1.5): local 800 tokens, global 600 (the constructor defaults since commit 4333da1,
  "Code refactored.", 2022-04-08);
* ``PRE_REFACTOR_MEMORY`` = (1.5, 2.0): local 600, global 800 (the defaults of the first code commit d80056d; the
  weights were published on 2022-03-18, before the swap).

Neither is a parameter, so a checkpoint loads under both; which one reproduces the released numbers is not known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...errors import ConfigError
from ..base import ModelConfig, PreprocessConfig, check_ranges

__all__ = ["LocaterConfig", "HEAD_MEMORY", "PRE_REFACTOR_MEMORY", "locater_preprocessing", "STREAM_WINDOW"]

#: (local_mem_size, global_mem_size) of the official code at HEAD (5da6daa; the refactor 4333da1)
HEAD_MEMORY = (2.0, 1.5)
#: (local_mem_size, global_mem_size) before the refactor (d80056d), when the weights were published
PRE_REFACTOR_MEMORY = (1.5, 2.0)
#: frames per call of :meth:`Locater.segment_window` from the Predictor: the per-frame recurrence is the same for
#: any window (the memories are carried across windows); the window only batches the ViT and fusion of its frames
STREAM_WINDOW = 8


def locater_preprocessing() -> PreprocessConfig:
    """Frames reach :meth:`Locater.segment` with their aspect kept (short side 320, as A2D-S+'s ``allPngs320H``
    frames, which then pass unchanged); ``segment`` resizes them to ``image_size`` x ``image_size`` with
    ``align_corners=True`` as the official ``Resize``. Mean and std 0.5 (official ``Normalize``)."""
    return PreprocessConfig(
        short_side=320,
        max_size=1333,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        window=STREAM_WINDOW,
        overlap=0,
        max_text_tokens=22,
    )


@dataclass
class LocaterConfig(ModelConfig):
    """All sizes of Locater (official ``VLFTrans``; defaults = the released architecture).

    Visual encoder: a ViT with ``vision_depth`` blocks (``embed_dim``, ``vision_heads``, LayerNorm eps 1e-6) whose
    ``pre_logits`` Linear+Tanh is applied to every token. Text: ``vocab_size`` x ``word_dim`` embedding of BERT
    WordPiece ids, a ``text_layers``-layer bidirectional LSTM of ``embed_dim / 2`` per direction, LayerNorm.
    Fusion: ``fusion_stages`` cascaded stages of ``fuse_depth`` blocks over [visual; words] and ``post_depth``
    blocks over the visual tokens (``fusion_heads`` heads). Memories: ``local_mem_size`` / ``global_mem_size``
    frames' worth of tokens (see the module docstring), written with ``memory_heads`` heads from
    ``global_frames`` frames sampled over the whole video (official ``--N1``). The adaptive query and the mask
    decoder use ``query_heads`` heads (they must be equal: the decoder reads heads x queries similarity maps).
    """

    architecture: str = "locater"
    preprocessing: PreprocessConfig = field(default_factory=locater_preprocessing)
    image_size: int = 320
    patch_size: int = 16
    embed_dim: int = 768
    vision_depth: int = 6
    vision_heads: int = 12
    fusion_stages: int = 3
    fuse_depth: int = 2
    post_depth: int = 2
    fusion_heads: int = 12
    mlp_ratio: float = 4.0
    vocab_size: int = 30000
    word_dim: int = 300
    text_layers: int = 3
    memory_heads: int = 8
    query_heads: int = 8
    local_mem_size: float = HEAD_MEMORY[0]
    global_mem_size: float = HEAD_MEMORY[1]
    global_frames: int = 3
    unk_token_id: int = 100

    optional_fields: ClassVar[tuple[str, ...]] = ("unk_token_id",)

    @property
    def grid(self) -> int:
        """Patches per side (20 at 320 px)."""
        return self.image_size // self.patch_size

    @property
    def patch_num(self) -> int:
        """Visual tokens of one frame without the class token (400 at 320 px)."""
        return self.grid**2

    @property
    def local_tokens(self) -> int:
        """Capacity of the local memory in tokens (official ``int(local_mem_size * patch_num)``)."""
        return int(self.local_mem_size * self.patch_num)

    @property
    def global_tokens(self) -> int:
        """Capacity of the global memory in tokens (official ``int(global_mem_size * patch_num)``)."""
        return int(self.global_mem_size * self.patch_num)

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "image_size": (16, None),
                "embed_dim": (8, None),
                "vision_depth": (1, None),
                "vision_heads": (1, None),
                "fusion_stages": (1, None),
                "fuse_depth": (1, None),
                "post_depth": (0, None),
                "fusion_heads": (1, None),
                "mlp_ratio": (0.25, None),
                "vocab_size": (2, None),
                "word_dim": (1, None),
                "text_layers": (1, None),
                "memory_heads": (1, None),
                "query_heads": (2, None),
                "local_mem_size": (0.0, None),
                "global_mem_size": (0.0, None),
                "global_frames": (1, None),
                "unk_token_id": (0, None),
            },
        )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size} (the decoder "
                "upsamples the patch grid by powers of 2)"
            )
        if self.patch_size != 16:
            raise ConfigError(
                f"patch_size={self.patch_size} is not supported: the official mask head upsamples the patch grid 4 "
                "times by 2, so the logits have the input's size only with 16-pixel patches"
            )
        if self.embed_dim % 2:
            raise ConfigError(f"embed_dim={self.embed_dim} must be even (two LSTM directions of embed_dim / 2)")
        for name in ("vision_heads", "fusion_heads", "memory_heads", "query_heads"):
            if self.embed_dim % getattr(self, name):
                raise ConfigError(f"embed_dim={self.embed_dim} must be a multiple of {name}={getattr(self, name)}")
        if (self.embed_dim + self.query_heads**2) % 4:
            raise ConfigError(
                f"embed_dim + query_heads**2 = {self.embed_dim + self.query_heads**2} must be a multiple of 4 (the "
                "mask head's width is a quarter of it)"
            )
        if self.local_tokens < 1 or self.global_tokens < 1:
            raise ConfigError(
                f"local_mem_size={self.local_mem_size} and global_mem_size={self.global_mem_size} must each hold at "
                f"least one token of the {self.patch_num} per frame (the released settings are {HEAD_MEMORY} at "
                f"HEAD and {PRE_REFACTOR_MEMORY} before the refactor)"
            )
        if self.unk_token_id >= self.vocab_size:
            raise ConfigError(f"unk_token_id={self.unk_token_id} must be < vocab_size={self.vocab_size}")

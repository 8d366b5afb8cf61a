"""A tiny deterministic RVOSModel for tests: it segments the pixels whose colour is named in the expression.

Expected masks are therefore known exactly, and the model is window-independent (pixel-wise), which makes the
Predictor's windowing, resizing and I/O testable without any trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from lvseg.models import register_family
from lvseg.models.base import ModelConfig, PreprocessConfig, RVOSModel

COLOR_NAMES = ["red", "green", "blue", "yellow", "white", "black"]
COLOR_VALUES = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255), (0, 0, 0)]


@dataclass
class ColorConfig(ModelConfig):
    architecture: str = "test-color"
    tolerance: float = 80.0  # RGB distance under which a pixel counts as the named colour


@register_family
class ColorModel(RVOSModel):
    config_class = ColorConfig
    architecture = "test-color"

    def __init__(self, config: ColorConfig) -> None:
        super().__init__(config)
        self.palette = nn.Parameter(torch.tensor(COLOR_VALUES, dtype=torch.float32))  # [K, 3] RGB
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.calls: list[int] = []  # frames per segment() call, to check windowing

    def _rgb(self, frames: torch.Tensor) -> torch.Tensor:
        pre = self.config.preprocessing
        mean = torch.tensor(pre.mean, device=frames.device, dtype=frames.dtype).view(3, 1, 1)
        std = torch.tensor(pre.std, device=frames.device, dtype=frames.dtype).view(3, 1, 1)
        return (frames * std + mean) * 255.0  # [B, T, 3, H, W]

    def forward(self, frames: torch.Tensor, text: Sequence[str]) -> dict[str, Any]:
        rgb = self._rgb(frames)
        index = torch.tensor([next((i for i, c in enumerate(COLOR_NAMES) if c in t.split()), -1) for t in text],
                             device=frames.device)
        color = self.palette[index.clamp(min=0)].to(frames.dtype)  # [B, 3]
        dist = (rgb - color[:, None, :, None, None]).norm(dim=2)  # [B, T, H, W]
        logits = self.gain.to(frames.dtype) * (self.config.tolerance - dist)
        logits = torch.where(index[:, None, None, None] >= 0, logits, torch.full_like(logits, -100.0))
        return {"mask_logits": logits}

    def segment(self, frames: torch.Tensor, text: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(frames.shape[1])
        logits = self(frames, text)["mask_logits"]
        scores = (logits > 0).float().mean(dim=(-1, -2)).clamp(0, 1)
        return logits, scores


def make_color_model(**preprocessing: Any) -> ColorModel:
    pre = PreprocessConfig(**{"short_side": 48, "max_size": 64, "window": 0, **preprocessing})
    return ColorModel(ColorConfig(preprocessing=pre)).eval()


def color_video(num_frames: int = 12, height: int = 48, width: int = 64, square: int = 16):
    """A blue video with a red square moving right by 2 px a frame; returns (frames uint8 [T,H,W,3], masks bool)."""
    import numpy as np

    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 2] = 255
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        x = (2 * t) % (width - square)
        y = (height - square) // 2
        masks[t, y: y + square, x: x + square] = True
    frames[masks] = (255, 0, 0)
    return frames, masks


@dataclass
class TiedConfig(ModelConfig):
    architecture: str = "test-tied"
    width: int = 4


@register_family
class TiedModel(RVOSModel):
    """A projection used twice (one parameter under two module paths) and a buffer computed at construction."""

    config_class = TiedConfig
    architecture = "test-tied"

    def __init__(self, config: TiedConfig) -> None:
        super().__init__(config)
        self.encode = nn.Linear(3, config.width)
        self.decode = nn.Linear(config.width, 1)
        self.head = nn.Sequential(self.decode)  # tied: head.0.* is decode.*
        self.register_buffer("offsets", torch.arange(config.width, dtype=torch.float32), persistent=False)
        self.built_on_meta = self.encode.weight.is_meta  # what the constructor saw

    def forward(self, frames: torch.Tensor, text: Sequence[str]) -> torch.Tensor:
        x = self.encode(frames.movedim(2, -1)) + self.offsets
        return self.head(x)[..., 0]

    def segment(self, frames: torch.Tensor, text: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(frames, text)
        return logits, logits.flatten(2).amax(-1).sigmoid()

"""Joint video + mask + box transforms on sample dicts, built on ``torchvision.transforms.v2`` and ``tv_tensors``.

Every transform takes a sample dict (as returned by the datasets in :mod:`lvseg.data`) and returns a new one. Random
parameters are drawn once per call, so all frames of a clip get the same resize, flip, crop and colour change.
Geometric transforms update, when present:

* ``frames``: ``uint8 [T, H, W, 3]`` (dataset output) or ``float32 [T, 3, H, W]`` (after :class:`Normalize`);
  the layout is told by the dtype: uint8 is channels-last, floating point is channels-first.
* ``masks`` ``bool [T, H, W]``, ``object_masks`` ``bool [N, T, H, W]`` (nearest-neighbour resizing),
* ``boxes`` ``float32 [T, 4]`` (xyxy, scaled/flipped with the frames; zeros where ``valid`` is False),
* ``valid`` ``bool [T]`` (a crop that removes the object clears it),
* ``size`` ``int64 [2]`` (current H, W; ``orig_size`` is kept).

:class:`RandomHorizontalFlip` also swaps "left" and "right" in ``text``, as ReferFormer does (here on word
prefixes, so "leftmost" becomes "rightmost" but "bright" is left alone; ReferFormer's plain ``str.replace``
would turn "bright" into "bleft").
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from lvseg.data._common import boxes_from_masks, clean_text
from lvseg.errors import InvalidInputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "ResizeShortSide",
    "RandomResize",
    "RandomHorizontalFlip",
    "RandomSizeCrop",
    "RandomSelect",
    "ColorJitter",
    "Normalize",
    "CleanText",
    "resized_size",
    "swap_left_right",
    "train_transforms",
    "eval_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, Any]


def _frames_tchw(sample: Sample) -> tuple[torch.Tensor, bool]:
    """The frames as ``[T, 3, H, W]`` and whether they were channels-last (uint8 ``[T, H, W, 3]``)."""
    frames = sample.get("frames")
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
        raise InvalidInputError("a sample's 'frames' must be a 4-D tensor: uint8 [T, H, W, 3] or float [T, 3, H, W].")
    if frames.dtype == torch.uint8:
        if frames.shape[-1] != 3:
            raise InvalidInputError(f"uint8 frames must be [T, H, W, 3], got {tuple(frames.shape)}.")
        return frames.permute(0, 3, 1, 2), True
    if frames.shape[1] != 3:
        raise InvalidInputError(f"floating-point frames must be [T, 3, H, W], got {tuple(frames.shape)}.")
    return frames, False


def _put_frames(sample: Sample, tchw: torch.Tensor, channels_last: bool) -> None:
    sample["frames"] = tchw.permute(0, 2, 3, 1).contiguous() if channels_last else tchw.contiguous()
    sample["size"] = torch.tensor(tchw.shape[-2:], dtype=torch.int64)


def _apply_to_masks(sample: Sample, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply a geometric function to ``masks`` [T,H,W] and ``object_masks`` [N,T,H,W] as ``tv_tensors.Mask``."""
    if "masks" in sample:
        sample["masks"] = fn(tv_tensors.Mask(sample["masks"].to(torch.uint8))).as_subclass(torch.Tensor).bool()
    if "object_masks" in sample:
        om = sample["object_masks"]
        n, t = om.shape[:2]
        flat = tv_tensors.Mask(om.reshape(n * t, *om.shape[2:]).to(torch.uint8))
        out = fn(flat).as_subclass(torch.Tensor).bool()
        sample["object_masks"] = out.reshape(n, t, *out.shape[-2:])


def _apply_to_boxes(sample: Sample, fn: Callable[[torch.Tensor], torch.Tensor], canvas: tuple[int, int]) -> None:
    if "boxes" not in sample:
        return
    boxes = tv_tensors.BoundingBoxes(sample["boxes"], format="XYXY", canvas_size=canvas)
    out = fn(boxes).as_subclass(torch.Tensor).to(torch.float32)
    if "valid" in sample:  # frames without the object keep all-zero boxes
        out = torch.where(sample["valid"][:, None], out, torch.zeros_like(out))
    sample["boxes"] = out


def resized_size(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output ``(h, w)`` of a short-side resize to ``size`` with the long side capped at ``max_size``.

    Same arithmetic as DETR / ReferFormer / MTTR (``int`` truncation of the long side, ``round`` of the capped
    short side), so that resized inputs match the official preprocessing pixel for pixel in size.
    """
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class ResizeShortSide:
    """Resize every frame (bilinear, antialiased) and mask (nearest) so the short side is ``size``.

    Args:
        size: target short side in pixels.
        max_size: cap on the long side (the short side shrinks to respect it), as in ReferFormer's ``max_size``.
    """

    def __init__(self, size: int, max_size: int | None = None) -> None:
        if size < 1 or (max_size is not None and max_size < size):
            raise InvalidInputError(f"ResizeShortSide needs 1 <= size <= max_size, got size={size}, "
                                    f"max_size={max_size}.")
        self.size, self.max_size = size, max_size

    def __call__(self, sample: Sample) -> Sample:
        return _resize(dict(sample), self.size, self.max_size)

    def __repr__(self) -> str:
        return f"ResizeShortSide(size={self.size}, max_size={self.max_size})"


def _resize(sample: Sample, size: int, max_size: int | None) -> Sample:
    frames, channels_last = _frames_tchw(sample)
    h, w = frames.shape[-2:]
    oh, ow = resized_size(h, w, size, max_size)
    if (oh, ow) == (h, w):
        sample["size"] = torch.tensor([h, w], dtype=torch.int64)
        return sample
    video = F.resize(tv_tensors.Video(frames), [oh, ow], interpolation=InterpolationMode.BILINEAR, antialias=True)
    _put_frames(sample, video.as_subclass(torch.Tensor), channels_last)
    _apply_to_masks(sample, lambda m: F.resize(m, [oh, ow]))
    _apply_to_boxes(sample, lambda b: F.resize(b, [oh, ow]), (h, w))
    return sample


class RandomResize:
    """:class:`ResizeShortSide` with the short side drawn uniformly from ``sizes`` (one draw per clip)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes:
            raise InvalidInputError("RandomResize needs at least one size.")
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, sample: Sample) -> Sample:
        return _resize(dict(sample), random.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


_LEFT_RIGHT = re.compile(r"\b(left|right)", flags=re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swap the words (and word prefixes) "left" and "right", keeping their capitalisation."""

    def repl(m: re.Match[str]) -> str:
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(repl, text)


class RandomHorizontalFlip:
    """Mirror the clip with probability ``p``; the text's "left"/"right" are swapped so it still holds."""

    def __init__(self, p: float = 0.5, swap_text: bool = True) -> None:
        self.p, self.swap_text = p, swap_text

    def __call__(self, sample: Sample) -> Sample:
        if random.random() >= self.p:
            return sample
        sample = dict(sample)
        frames, channels_last = _frames_tchw(sample)
        canvas = tuple(frames.shape[-2:])
        _put_frames(sample, F.horizontal_flip(tv_tensors.Video(frames)).as_subclass(torch.Tensor), channels_last)
        _apply_to_masks(sample, F.horizontal_flip)
        _apply_to_boxes(sample, F.horizontal_flip, canvas)  # type: ignore[arg-type]
        if self.swap_text and isinstance(sample.get("text"), str):
            sample["text"] = swap_left_right(sample["text"])
        return sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomSizeCrop:
    """Crop a random window of side lengths in ``[min_size, max_size]`` (capped by the frame), same for all frames.

    Boxes and ``valid`` are recomputed from the cropped masks (an object cropped away becomes invalid).
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        if not 1 <= min_size <= max_size:
            raise InvalidInputError(f"RandomSizeCrop needs 1 <= min_size <= max_size, got {min_size}, {max_size}.")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        frames, channels_last = _frames_tchw(sample)
        h, w = frames.shape[-2:]
        ch = random.randint(min(self.min_size, h), min(h, self.max_size))
        cw = random.randint(min(self.min_size, w), min(w, self.max_size))
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        video = F.crop(tv_tensors.Video(frames), top, left, ch, cw)
        _put_frames(sample, video.as_subclass(torch.Tensor), channels_last)
        _apply_to_masks(sample, lambda m: F.crop(m, top, left, ch, cw))
        if "masks" in sample:
            boxes, visible = boxes_from_masks(sample["masks"])
            annotated = sample.get("annotated", torch.ones_like(visible))
            sample["valid"] = visible & annotated
            if "boxes" in sample:
                sample["boxes"] = boxes
        return sample

    def __repr__(self) -> str:
        return f"RandomSizeCrop(min_size={self.min_size}, max_size={self.max_size})"


class RandomSelect:
    """Apply ``first`` with probability ``p``, else ``second`` (ReferFormer's choice between two pipelines)."""

    def __init__(self, first: Callable[[Sample], Sample], second: Callable[[Sample], Sample], p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, sample: Sample) -> Sample:
        return self.first(sample) if random.random() < self.p else self.second(sample)


class ColorJitter:
    """Photometric jitter (``torchvision.transforms.v2.ColorJitter``) with one draw for the whole clip."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.0) -> None:
        # hue is off by default: torchvision's RGB->HSV round trip costs ~5x the rest of the training pipeline
        self.jitter = v2.ColorJitter(brightness, contrast, saturation, hue)

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        frames, channels_last = _frames_tchw(sample)
        # one call on a Video tv_tensor: the random factors are drawn once and applied to every frame
        out = self.jitter(tv_tensors.Video(frames)).as_subclass(torch.Tensor)
        _put_frames(sample, out, channels_last)
        return sample

    def __repr__(self) -> str:
        j = self.jitter
        return f"ColorJitter({j.brightness}, {j.contrast}, {j.saturation}, {j.hue})"


class Normalize:
    """uint8 ``[T, H, W, 3]`` frames -> ``float32 [T, 3, H, W]``, scaled to [0, 1] then ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        frames, channels_last = _frames_tchw(sample)
        if not channels_last:
            raise InvalidInputError("Normalize expects uint8 frames [T, H, W, 3]; these are already floating point.")
        # (x / 255 - mean) / std == (x - 255 mean) * (1 / (255 std)), done in place on one float copy
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        scale = 1.0 / (torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        x = frames.to(torch.float32).sub_(mean).mul_(scale)
        sample["frames"] = x.contiguous(memory_format=torch.contiguous_format)
        sample["size"] = torch.tensor(x.shape[-2:], dtype=torch.int64)
        return sample

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class CleanText:
    """Lower-case the text and collapse whitespace, as ReferFormer and MTTR do before tokenising."""

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "text": clean_text(sample["text"])} if isinstance(sample.get("text"), str) else sample

    def __repr__(self) -> str:
        return "CleanText()"


def train_transforms(max_size: int = 640, scales: Sequence[int] = (288, 320, 352, 392, 416, 448, 480, 512),
                     flip: bool = True, crop: bool = True, jitter: bool = True,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Compose:
    """ReferFormer's training augmentation: flip (+ text swap), colour jitter, random resize or
    resize-crop-resize, normalise. Set ``flip=False`` for datasets whose text must not change (MTTR's A2D)."""
    ops: list[Callable[[Sample], Sample]] = [CleanText()]
    if flip:
        ops.append(RandomHorizontalFlip())
    if jitter:
        ops.append(ColorJitter())
    resize = RandomResize(scales, max_size)
    if crop:
        ops.append(RandomSelect(resize, Compose([RandomResize([400, 500, 600]), RandomSizeCrop(384, 600), resize])))
    else:
        ops.append(resize)
    ops.append(Normalize(mean, std))
    return Compose(ops)


def eval_transforms(size: int = 360, max_size: int | None = 640, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Evaluation preprocessing: clean text, short-side resize (ReferFormer: 360 / 640), normalise."""
    return Compose([CleanText(), ResizeShortSide(size, max_size), Normalize(mean, std)])

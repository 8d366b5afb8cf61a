"""Joint video + mask + box transforms on sample dicts, built on ``torchvision.transforms.v2`` and ``tv_tensors``.

Every transform takes a sample dict (as returned by the datasets in :mod:`lvseg.data`) and returns a new one. Random
parameters are drawn once per call, so all frames of a clip get the same resize, flip, crop and colour change
(except :class:`PhotometricDistort`, which draws per frame as ReferFormer's does).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
    "ResizeSquare",
    "RandomResize",
    "RandomHorizontalFlip",
    "RandomSizeCrop",
    "RandomSelect",
    "ColorJitter",
    "PhotometricDistort",
    "PhotometricParams",
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
            raise InvalidInputError(
                f"ResizeShortSide needs 1 <= size <= max_size, got size={size}, max_size={max_size}."
            )
        self.size, self.max_size = size, max_size

    def __call__(self, sample: Sample) -> Sample:
        return _resize(dict(sample), self.size, self.max_size)

    def __repr__(self) -> str:
        return f"ResizeShortSide(size={self.size}, max_size={self.max_size})"


class ResizeSquare:
    """Resize every frame (bilinear, antialiased) and mask (nearest) to ``size`` x ``size``, aspect ratio not kept
    (LAVT's RefCOCO preprocessing: 480x480)."""

    def __init__(self, size: int = 480) -> None:
        if size < 1:
            raise InvalidInputError(f"ResizeSquare needs size >= 1, got {size}.")
        self.size = size

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        frames, channels_last = _frames_tchw(sample)
        h, w = frames.shape[-2:]
        shape = [self.size, self.size]
        if (h, w) != (self.size, self.size):
            video = F.resize(tv_tensors.Video(frames), shape, interpolation=InterpolationMode.BILINEAR, antialias=True)
            _put_frames(sample, video.as_subclass(torch.Tensor), channels_last)
            _apply_to_masks(sample, lambda m: F.resize(m, shape))
            _apply_to_boxes(sample, lambda b: F.resize(b, shape), (h, w))
        sample["size"] = torch.tensor(shape, dtype=torch.int64)
        return sample

    def __repr__(self) -> str:
        return f"ResizeSquare(size={self.size})"


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

    def __init__(
        self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0
    ) -> None:
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


@dataclass(frozen=True)
class PhotometricParams:
    """The random choices :class:`PhotometricDistort` makes for one frame (``None``: that step is skipped).

    Attributes:
        brightness: value added to every channel, in ``[-delta, delta]`` (official ``delta=32``).
        contrast_first: True: contrast, then the HSV steps; False: the HSV steps, then contrast.
        contrast: factor the image is multiplied by, in ``[0.5, 1.5]``.
        saturation: factor the HSV saturation is multiplied by, in ``[0.5, 1.5]``.
        hue: degrees added to the HSV hue, in ``[-18, 18]`` (wrapped once into ``[0, 360]``).
        channel_order: permutation of the 3 channels applied last (``image[..., perm]``).
    """

    brightness: float | None = None
    contrast_first: bool = True
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    channel_order: tuple[int, int, int] | None = None


_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_FLT_EPSILON = 1.1920928955078125e-07  # C's FLT_EPSILON, used by OpenCV's float HSV conversion
# OpenCV HSV2BGR: for each hue sector 0..5, which of (v, v(1-s), v(1-s f), v(1-s(1-f))) is channel 0, 1, 2
_SECTOR_TABLE = ((1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0))
_HSCALE = torch.tensor(6.0 / 360.0, dtype=torch.float32)  # 6.f / 360.f
_ONE_SIXTH = torch.tensor(1.0 / 6.0, dtype=torch.float32)


def _bgr_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's float ``COLOR_BGR2HSV`` on ``[3, H, W]`` float32 (channel 0 read as blue, 2 as red).

    No range is assumed: V = max, S = (max - min) / (|max| + eps), H in degrees ``[0, 360]``. The arithmetic follows
    OpenCV's vectorised path: ``H = fma(delta, 60 / (max - min + eps), offset)`` with the offset 360 (red is the
    maximum and green < blue), 0 (red max), 120 (green max) or 240; the fused multiply-add is computed in float64
    and rounded once to float32.
    """
    b, g, r = img[0], img[1], img[2]
    v = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    diff = v - vmin
    s = diff / (v.abs() + _FLT_EPSILON)
    rev = torch.full_like(diff, 60.0) / (diff + _FLT_EPSILON)  # a true division (``60.0 / t`` is 60 * (1 / t))
    r_max, g_max = r == v, g == v
    delta = torch.where(r_max, g - b, torch.where(g_max, b - r, r - g))
    offset = torch.where(r_max, torch.where(g < b, 360.0, 0.0), torch.where(g_max, 120.0, 240.0))
    h = (delta.double() * rev.double() + offset.double()).to(torch.float32)
    return torch.stack([h, s, v])


def _hsv_to_bgr(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's float ``COLOR_HSV2BGR`` on ``[3, H, W]`` (H in degrees ``[0, 360]``, any S and V; no clipping),
    following its vectorised arithmetic (sector = trunc(H / 60) modulo 6)."""
    h, s, v = hsv[0] * _HSCALE, hsv[1], hsv[2]
    pre = torch.trunc(h)  # OpenCV's vectorised path: whole sectors, then the sector modulo 6
    frac = h - pre
    sector = (pre - torch.trunc(pre * _ONE_SIXTH) * 6.0).long().clamp(0, 5)
    # OpenCV's compiled code fuses ``1 - s * f`` into one multiply-add: computed in float64, rounded once
    s64 = s.double()
    tab = torch.stack(
        [
            v,
            v * (1.0 - s),
            v * (1.0 - s64 * frac.double()).to(torch.float32),
            v * (1.0 - s64 * (1.0 - frac).double()).to(torch.float32),
        ]
    )  # [4, H, W]
    index = torch.tensor(_SECTOR_TABLE, dtype=torch.long)[sector].permute(2, 0, 1)  # [3, H, W]
    return torch.gather(tab, 0, index)


class PhotometricDistort:
    """SSD-style photometric distortion, re-expressing ReferFormer's ``PhotometricDistort``
    (``datasets/transforms_video.py``, used by its Ref-YouTube-VOS and RefCOCO training transforms right after the
    horizontal flip).

    What the official transform does, and so what this one does, for **every frame separately** (each frame gets
    its own random draws: the frames of a clip are distorted differently, unlike :class:`ColorJitter`):

    1. The frame is converted to ``float32`` on the 0-255 scale.
    2. Brightness: with probability 1/2, add ``uniform(-32, 32)`` to all pixels and channels.
    3. With probability 1/2 the order is *contrast first*, else *contrast last*, around the HSV steps 4-7.
       Contrast: with probability 1/2 multiply the image by ``uniform(0.5, 1.5)``.
    4. Convert to HSV with OpenCV's float ``COLOR_BGR2HSV``. Quirk: the frames are RGB, so OpenCV reads red as blue
       (and vice versa); the hue it sees is ``(240 - true hue) mod 360``. The round trip in 7 is consistent, so the
       only effect is that a hue shift of ``+d`` turns the true hue by ``-d``. Values outside [0, 255] (after
       brightness/contrast) are converted as they are: ``S = (max - min) / (|max| + eps)``, ``V = max``.
    5. Saturation: with probability 1/2 multiply S by ``uniform(0.5, 1.5)``; S may exceed 1 (no clipping), which
       makes the smallest channel negative after the conversion back.
    6. Hue: with probability 1/2 add ``uniform(-18, 18)`` degrees, then wrap once (``> 360``: -360; ``< 0``: +360).
    7. Convert back with OpenCV's float ``COLOR_HSV2BGR`` (hue taken modulo 360).
    8. Lighting noise: with probability 1/2 permute the three channels with one of the 6 permutations (uniform).
    9. ``astype('uint8')`` of the float image, **without clipping**: values are truncated toward zero and wrap
       modulo 256 (NumPy's cast on x86-64), so ``300.7 -> 44`` and ``-10.2 -> 246``. Set ``overflow="clip"`` to
       clamp to [0, 255] instead (round toward zero as well); the default ``"wrap"`` is the official behaviour.

    Numerics: steps 4 and 7 follow OpenCV's vectorised float code, including its fused multiply-adds (evaluated
    here in float64 and rounded once), so even a frame with no step drawn comes out changed as the official one
    does: the float round trip lands a hair below many integers and step 9 truncates, lowering about a quarter of
    the channel values by one. Against ``cv2.cvtColor`` (opencv-python-headless 5.0) the uint8 outputs agree
    except for about 1 value in 40,000 (off by one).

    The random draws happen in the official order (brightness coin and value, order coin, then the coins and
    values of the steps in the order they run, then the lighting coin and permutation index); they come from
    Python's ``random`` module (the official code uses NumPy's global generator), so ``random.seed`` makes the
    transform deterministic.

    Frames: uint8 ``[T, H, W, 3]`` in and out (the official case). Floating-point ``[T, 3, H, W]`` frames are taken
    as values in [0, 1]: they are scaled by 255, distorted, scaled back by 1/255 and returned as float32 with no
    rounding, wrap or clipping. Masks, boxes, text and all other keys are not touched.
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        overflow: Literal["wrap", "clip"] = "wrap",
    ) -> None:
        if not 0.0 <= brightness_delta <= 255.0:
            raise InvalidInputError(f"PhotometricDistort needs 0 <= brightness_delta <= 255, got {brightness_delta}.")
        if not 0.0 <= hue_delta <= 360.0:
            raise InvalidInputError(f"PhotometricDistort needs 0 <= hue_delta <= 360, got {hue_delta}.")
        for name, (lo, hi) in (("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= lo <= hi:
                raise InvalidInputError(f"PhotometricDistort needs 0 <= lower <= upper for {name}, got ({lo}, {hi}).")
        if overflow not in ("wrap", "clip"):
            raise InvalidInputError(
                f"PhotometricDistort overflow must be 'wrap' (official) or 'clip', got {overflow!r}."
            )
        self.brightness_delta, self.hue_delta = float(brightness_delta), float(hue_delta)
        self.contrast, self.saturation = tuple(contrast), tuple(saturation)
        self.overflow = overflow

    def draw(self) -> PhotometricParams:
        """Draw one frame's random choices, in the official order, from Python's ``random`` module."""
        brightness = random.uniform(-self.brightness_delta, self.brightness_delta) if random.random() < 0.5 else None
        contrast_first = random.random() < 0.5
        contrast = None
        if contrast_first and random.random() < 0.5:
            contrast = random.uniform(*self.contrast)
        saturation = random.uniform(*self.saturation) if random.random() < 0.5 else None
        hue = random.uniform(-self.hue_delta, self.hue_delta) if random.random() < 0.5 else None
        if not contrast_first and random.random() < 0.5:
            contrast = random.uniform(*self.contrast)
        order = _PERMUTATIONS[random.randrange(len(_PERMUTATIONS))] if random.random() < 0.5 else None
        return PhotometricParams(brightness, contrast_first, contrast, saturation, hue, order)

    @staticmethod
    def apply(frame: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
        """Distort one float32 frame ``[3, H, W]`` on the 0-255 scale with given choices; returns float32
        ``[3, H, W]`` before any uint8 conversion (values may lie outside [0, 255])."""
        img = frame.to(torch.float32)
        if params.brightness is not None:
            img = img + params.brightness
        if params.contrast_first and params.contrast is not None:
            img = img * params.contrast
        hsv = _bgr_to_hsv(img)
        if params.saturation is not None:
            hsv[1] = hsv[1] * params.saturation
        if params.hue is not None:
            h = hsv[0] + params.hue
            h = torch.where(h > 360.0, h - 360.0, h)
            hsv[0] = torch.where(h < 0.0, h + 360.0, h)
        img = _hsv_to_bgr(hsv)
        if not params.contrast_first and params.contrast is not None:
            img = img * params.contrast
        if params.channel_order is not None:
            img = img[list(params.channel_order)]
        return img

    def to_uint8(self, img: torch.Tensor) -> torch.Tensor:
        """The official ``astype('uint8')`` (truncate, wrap modulo 256), or a clamp with ``overflow="clip"``."""
        if self.overflow == "clip":
            return img.clamp(0.0, 255.0).to(torch.uint8)
        return torch.remainder(img.trunc().to(torch.int64), 256).to(torch.uint8)

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample)
        frames, channels_last = _frames_tchw(sample)
        out = []
        for frame in frames:
            params = self.draw()
            if channels_last:
                out.append(self.to_uint8(self.apply(frame, params)))
            else:
                out.append(self.apply(frame.to(torch.float32) * 255.0, params) / 255.0)
        _put_frames(sample, torch.stack(out), channels_last)
        return sample

    def __repr__(self) -> str:
        return (
            f"PhotometricDistort(brightness_delta={self.brightness_delta}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue_delta={self.hue_delta}, overflow={self.overflow!r})"
        )


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


def train_transforms(
    max_size: int = 640,
    scales: Sequence[int] = (288, 320, 352, 392, 416, 448, 480, 512),
    flip: bool = True,
    crop: bool = True,
    photometric: Literal["ssd", "jitter"] | None = "ssd",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """ReferFormer's training augmentation: flip (+ text swap), photometric distortion, random resize or
    resize-crop-resize, normalise (the order of ``make_coco_transforms`` in its ``datasets/ytvos.py``).

    Args:
        photometric: ``"ssd"`` (default, official): :class:`PhotometricDistort`, drawn per frame;
            ``"jitter"``: the lighter :class:`ColorJitter`, one draw per clip; ``None``: no colour change.
        flip: set False for datasets whose text must not change (MTTR's A2D).
    """
    if photometric not in ("ssd", "jitter", None):
        raise InvalidInputError(f"train_transforms photometric must be 'ssd', 'jitter' or None, got {photometric!r}.")
    ops: list[Callable[[Sample], Sample]] = [CleanText()]
    if flip:
        ops.append(RandomHorizontalFlip())
    if photometric == "ssd":
        ops.append(PhotometricDistort())
    elif photometric == "jitter":
        ops.append(ColorJitter())
    resize = RandomResize(scales, max_size)
    if crop:
        ops.append(RandomSelect(resize, Compose([RandomResize([400, 500, 600]), RandomSizeCrop(384, 600), resize])))
    else:
        ops.append(resize)
    ops.append(Normalize(mean, std))
    return Compose(ops)


def eval_transforms(
    size: int = 360,
    max_size: int | None = 640,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Evaluation preprocessing: clean text, short-side resize (ReferFormer: 360 / 640), normalise."""
    return Compose([CleanText(), ResizeShortSide(size, max_size), Normalize(mean, std)])

"""Batching of sample dicts whose clips differ in length and frame size (zero padding + padding masks).

``collate_clips(samples)`` returns a dict with

* ``frames``: ``[B, T, 3, H, W]`` float (channels-first samples) or ``[B, T, H, W, 3]`` uint8 (dataset output),
  zero-padded at the bottom/right and at the end of the clip; ``H, W`` optionally rounded up to a multiple of
  ``size_divisibility``;
* ``padding_mask``: ``bool [B, T, H, W]``, True on padded pixels (and on every pixel of a padded frame), the
  DETR/ReferFormer convention;
* ``frame_mask``: ``bool [B, T]``, True for real frames;
* ``masks`` ``bool [B, T, H, W]``, ``boxes`` ``float32 [B, T, 4]``, ``valid``/``annotated`` ``bool [B, T]``
  (False on padding) when every sample has them;
* ``object_masks``: list of ``bool [N_i, T, H, W]`` (N differs per sample), padded like ``masks``;
* ``size`` ``int64 [B, 2]`` (each sample's H, W before padding) and ``orig_size`` ``int64 [B, 2]``;
* every other key as a list (``text``, ``video``, ``exp_id``, ``frame_ids``, ``frame_indices``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lvseg.errors import InvalidInputError

__all__ = ["collate_clips", "ClipCollator"]

_PER_FRAME = ("valid", "annotated")


def _round_up(x: int, k: int) -> int:
    return (x + k - 1) // k * k


def collate_clips(samples: Sequence[dict[str, Any]], size_divisibility: int = 1) -> dict[str, Any]:
    """Pad and stack a list of samples into one batch (see the module docstring for the keys and shapes)."""
    if not samples:
        raise InvalidInputError("collate_clips needs at least one sample.")
    if size_divisibility < 1:
        raise InvalidInputError(f"size_divisibility must be >= 1, got {size_divisibility}.")
    first = samples[0]["frames"]
    channels_last = first.dtype == torch.uint8
    shapes = []
    for s in samples:
        f = s.get("frames")
        if not isinstance(f, torch.Tensor) or f.ndim != 4 or (f.dtype == torch.uint8) != channels_last:
            raise InvalidInputError(
                "every sample's 'frames' must be a 4-D tensor of the same kind: all uint8 "
                "[T, H, W, 3] or all float [T, 3, H, W] (apply the same transform to all)."
            )
        t, h, w = (f.shape[0], f.shape[1], f.shape[2]) if channels_last else (f.shape[0], f.shape[2], f.shape[3])
        shapes.append((t, h, w))
    B = len(samples)
    T = max(s[0] for s in shapes)
    H = _round_up(max(s[1] for s in shapes), size_divisibility)
    W = _round_up(max(s[2] for s in shapes), size_divisibility)

    frames_shape = (B, T, H, W, 3) if channels_last else (B, T, 3, H, W)
    frames = first.new_zeros(frames_shape)
    padding_mask = torch.ones((B, T, H, W), dtype=torch.bool)
    frame_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, (s, (t, h, w)) in enumerate(zip(samples, shapes)):
        if channels_last:
            frames[i, :t, :h, :w] = s["frames"]
        else:
            frames[i, :t, :, :h, :w] = s["frames"]
        padding_mask[i, :t, :h, :w] = False
        frame_mask[i, :t] = True
    batch: dict[str, Any] = {
        "frames": frames,
        "padding_mask": padding_mask,
        "frame_mask": frame_mask,
        "size": torch.tensor([[h, w] for _, h, w in shapes], dtype=torch.int64),
    }
    for key in ("masks", "object_masks", "boxes", *_PER_FRAME):
        have = sum(key in s for s in samples)
        if 0 < have < B:
            raise InvalidInputError(
                f"{have} of {B} samples have {key!r} and the others do not; batch samples of "
                "one kind (with or without ground truth) together."
            )
    if all("masks" in s for s in samples):
        masks = torch.zeros((B, T, H, W), dtype=torch.bool)
        for i, (s, (t, h, w)) in enumerate(zip(samples, shapes)):
            masks[i, :t, :h, :w] = s["masks"]
        batch["masks"] = masks
    if all("object_masks" in s for s in samples):
        batch["object_masks"] = []
        for s, (t, h, w) in zip(samples, shapes):
            om = s["object_masks"]
            padded = torch.zeros((om.shape[0], T, H, W), dtype=torch.bool)
            padded[:, :t, :h, :w] = om
            batch["object_masks"].append(padded)
    if all("boxes" in s for s in samples):
        boxes = torch.zeros((B, T, 4), dtype=torch.float32)
        for i, (s, (t, _, _)) in enumerate(zip(samples, shapes)):
            boxes[i, :t] = s["boxes"]
        batch["boxes"] = boxes
    for key in _PER_FRAME:
        if all(key in s for s in samples):
            flags = torch.zeros((B, T), dtype=torch.bool)
            for i, (s, (t, _, _)) in enumerate(zip(samples, shapes)):
                flags[i, :t] = s[key]
            batch[key] = flags
    if all("orig_size" in s for s in samples):
        batch["orig_size"] = torch.stack([torch.as_tensor(s["orig_size"], dtype=torch.int64) for s in samples])
    handled = set(batch) | {"object_masks", "masks", "boxes", *_PER_FRAME}
    for key in first_keys(samples):
        if key not in handled:
            batch[key] = [s.get(key) for s in samples]
    return batch


def first_keys(samples: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the samples' keys, in first-seen order."""
    seen: dict[str, None] = {}
    for s in samples:
        for k in s:
            seen.setdefault(k, None)
    return list(seen)


class ClipCollator:
    """Picklable ``collate_fn`` for ``DataLoader`` workers: ``DataLoader(ds, collate_fn=ClipCollator(32))``."""

    def __init__(self, size_divisibility: int = 1) -> None:
        self.size_divisibility = size_divisibility

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_clips(samples, self.size_divisibility)

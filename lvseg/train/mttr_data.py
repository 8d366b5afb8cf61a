"""A2D-Sentences as MTTR trains on it: every instance of the annotated frame is a target, the sentence picks one.

:class:`lvseg.data.A2DSentences` gives the referred instance's mask; MTTR's official training matches its queries
to *all* instances of the annotated frame (the ``.h5`` file's ``reMask``) and supervises the reference head with
the index of the referred one. :class:`A2DInstances` adds those instances (``object_masks`` [N, T, H, W],
``obj_ids``, ``referred_index``) before the augmentation, so flips and resizes move them with the frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = ["A2DInstances", "a2d_mttr_transforms", "a2d_mttr_data", "A2D_WINDOW"]

logger = logging.getLogger(__name__)

A2D_WINDOW = 10  # frames per clip of the released (best) A2D model; the annotated frame is at index 10 // 2


class A2DInstances(Dataset):
    """Wrap an :class:`lvseg.data.A2DSentences` (built with ``transform=None``) so that each sample carries every
    instance of its annotated frame.

    Added keys: ``obj_ids`` (the frame's instance ids), ``object_masks`` ``bool [N, T, H, W]`` (non-zero on the
    annotated frame only) and ``referred_index`` (position of the sentence's instance in ``obj_ids``);
    ``transform`` then runs on the whole sample.
    """

    def __init__(self, dataset: Any, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        if getattr(dataset, "transform", None) is not None:
            raise ConfigError("build the A2DSentences dataset with transform=None and pass the transform to "
                              "A2DInstances, so the added instance masks are augmented with the frames")
        for attr in ("samples", "mask_dir"):
            if not hasattr(dataset, attr):
                raise ConfigError(f"A2DInstances wraps lvseg.data.A2DSentences; {type(dataset).__name__} has no "
                                  f"{attr!r}")
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..data.a2d import read_a2d_frame_annotation

        sample = dict(self.dataset[index])
        _, video, frame_idx, instance_id = self.dataset.samples[index]
        instances, masks, _ = read_a2d_frame_annotation(Path(self.dataset.mask_dir) / video / f"{frame_idx:05d}.h5")
        t, h, w = sample["masks"].shape
        object_masks = torch.zeros((len(instances), t, h, w), dtype=torch.bool)
        object_masks[:, int(sample["center_index"])] = torch.from_numpy(masks)
        sample["obj_ids"] = list(instances)
        sample["object_masks"] = object_masks
        sample["referred_index"] = instances.index(instance_id)
        return self.transform(sample) if self.transform is not None else sample


def a2d_mttr_transforms(short_side: int = 320, max_size: int = 576, flip: bool = True) -> Callable[[dict], dict]:
    """MTTR's A2D training augmentation: text clean-up (lower case, single spaces), horizontal flip (p 0.5, with
    "left"/"right" swapped in the sentence) and a resize of the short side to 320 (long side at most 576)."""
    from ..data.transforms import CleanText, Compose, RandomHorizontalFlip, RandomResize

    steps: list[Callable[[dict], dict]] = [CleanText()]
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    steps.append(RandomResize([short_side], max_size=max_size))
    return Compose(steps)


def a2d_mttr_data(root: str | Path, window: int = A2D_WINDOW) -> tuple[Dataset, None]:
    """A2D-Sentences ``train`` at ``root`` as MTTR trains on it: ``window``-frame clips centred on the annotated
    frame, all its instances as targets, MTTR's augmentation. No validation set: A2D is scored with the mAP/IoU
    evaluator (``lvseg.evaluate``), not the J&F the trainer computes."""
    from ..data import A2DSentences

    base = A2DSentences(root, "train", num_frames=window)
    return A2DInstances(base, a2d_mttr_transforms()), None

"""A2D-Sentences and Ref-YouTube-VOS as MTTR trains on them: every instance is a target, the sentence picks one.

:class:`lvseg.data.A2DSentences` gives the referred instance's mask; MTTR's official training matches its queries
to *all* instances of the annotated frame (the ``.h5`` file's ``reMask``) and supervises the reference head with
the index of the referred one. :class:`A2DInstances` adds those instances (``object_masks`` [N, T, H, W],
``obj_ids``, ``referred_index``) before the augmentation, so flips and resizes move them with the frames.

On Ref-YouTube-VOS (:class:`YTVOSInstances`) MTTR cuts each video into consecutive ``window``-frame clips
(:func:`mttr_windows`) and takes every object annotated anywhere in the clip as a target, the sentence's object
being ``referred_index`` among them (hidden on some frames: empty mask there, "no object" reference target).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = [
    "A2DInstances",
    "a2d_mttr_transforms",
    "a2d_mttr_data",
    "A2D_WINDOW",
    "YTVOSInstances",
    "mttr_windows",
    "ytvos_mttr_transforms",
    "ytvos_mttr_data",
    "YTVOS_WINDOW",
]

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
            raise ConfigError(
                "build the A2DSentences dataset with transform=None and pass the transform to "
                "A2DInstances, so the added instance masks are augmented with the frames"
            )
        for attr in ("samples", "mask_dir"):
            if not hasattr(dataset, attr):
                raise ConfigError(
                    f"A2DInstances wraps lvseg.data.A2DSentences; {type(dataset).__name__} has no {attr!r}"
                )
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


# ------------------------------------------------------------------------------------------------ Ref-YouTube-VOS
YTVOS_WINDOW = 12  # frames per training clip of the released Ref-YouTube-VOS model (README: -ws 12)


def mttr_windows(num_frames: int, window: int) -> list[list[int]]:
    """MTTR's Ref-YouTube-VOS training clips of a video with ``num_frames`` annotated frames: consecutive,
    non-overlapping runs of ``window`` frames from the first one; a short last run is replaced by the video's last
    ``window`` frames, or, in a video shorter than ``window``, completed by repeating its last frame.

    Returns lists of frame positions (into the sorted frame list), e.g. ``(13, 5)`` ->
    ``[[0..4], [5..9], [8..12]]`` and ``(3, 5)`` -> ``[[0, 1, 2, 2, 2]]``.
    """
    if window < 1:
        raise ConfigError(f"the MTTR window must be >= 1 frame, got {window}")
    if num_frames < 1:
        raise ConfigError("a video with no annotated frames has no MTTR training window")
    windows = [list(range(i, min(i + window, num_frames))) for i in range(0, num_frames, window)]
    if len(windows[-1]) < window:
        if num_frames >= window:
            windows[-1] = list(range(num_frames - window, num_frames))
        else:
            windows[-1] = windows[-1] + [num_frames - 1] * (window - len(windows[-1]))
    return windows


def _object_ids(path: Path) -> list[int]:
    """Sorted non-zero object ids of one annotation PNG (PIL's colour count for 8-bit PNGs: ~2-3 ms at 720p)."""
    import numpy as np
    from PIL import Image

    from ..data._common import load_index_mask

    if path.is_file():
        with Image.open(path) as img:
            # (count, index) pairs for these modes; typed as Any because Pillow 12's stubs give the index as
            # tuple | float (any mode) and Pillow 13's as int, and mypy runs with both (lvseg[app] pins pillow<13)
            colors: Any = img.getcolors(256) if img.mode in ("P", "L") else None
        if colors is not None:
            return sorted(int(k) for _, k in colors if k != 0)
    ids = np.asarray(load_index_mask(path))  # other modes; a missing or unreadable file raises a DatasetError
    return [int(k) for k in np.unique(ids) if k != 0]


class YTVOSInstances(Dataset):
    """Ref-YouTube-VOS ``train`` as MTTR trains on it (``datasets/refer_youtube_vos`` of mttr2021/MTTR).

    One sample per (expression, window) for the windows of :func:`mttr_windows` in which the referred object
    appears in at least one frame (the others are skipped, as officially). The targets are *all* objects present
    in the window's annotation PNGs, sorted by id, and the sentence's object is ``referred_index`` among them; on
    frames where it is hidden its mask is empty, which the MTTR objective turns into a "no object" reference
    target (the official ``is_ref_inst_visible``). Expressions that refer to several objects (MeViS-style lists,
    e.g. some Shapes ones) are skipped: MTTR's reference head marks one instance.

    Listing the windows reads every annotation PNG once; ``index_cache`` (a JSON file of the object ids per frame)
    keeps that reading for later runs: ``"auto"`` is ``<root>/train/lvseg_mttr_object_ids.json`` (skipped with a
    warning when it cannot be written), ``None`` keeps it in memory only. A video is re-read when its frame list
    changes; delete the file after editing annotation PNGs in place.

    A sample has ``frames`` ``uint8 [T, H, W, 3]``, ``text``, ``video``, ``exp_id``, ``frame_ids``,
    ``frame_indices`` ``int64 [T]``, ``orig_size``, ``obj_ids`` (the window's object ids), ``object_masks``
    ``bool [N, T, H, W]``, ``referred_index`` and the referred object's ``masks`` ``bool [T, H, W]``, ``boxes``,
    ``valid``, ``annotated``; ``transform`` runs on the whole sample.
    """

    def __init__(
        self,
        root: str | Path,
        window: int = YTVOS_WINDOW,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        index_cache: str | Path | None = "auto",
        progress: bool = True,
    ) -> None:
        from ..data import RefYouTubeVOS

        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"the MTTR window must be a number of frames >= 1 (official: 12 or 8), got {window!r}")
        self.base = RefYouTubeVOS(root, "train")  # validated index: frames, expressions, referred ids
        self.annotation_dir = Path(str(self.base.annotation_dir))  # train always has its Annotations folder
        self.window = window
        self.transform = transform
        ids = self._frame_object_ids(index_cache, progress)
        self.samples: list[tuple[str, str, int, tuple[int, ...]]] = []
        multi = 0
        for vid, info in self.base.videos.items():
            windows = mttr_windows(len(info["frames"]), window)
            present = [set().union(*(ids[vid][i] for i in w)) for w in windows]
            for exp_id, exp in info["expressions"].items():
                if len(exp["obj_ids"]) != 1:
                    multi += 1
                    continue
                ref = exp["obj_ids"][0]
                self.samples += [(vid, exp_id, ref, tuple(w)) for w, p in zip(windows, present) if ref in p]
        if multi:
            logger.info("MTTR Ref-YouTube-VOS: skipped %d expressions that refer to several objects", multi)
        logger.info("MTTR Ref-YouTube-VOS train: %d windows of %d frames", len(self.samples), window)

    def _frame_object_ids(self, index_cache: str | Path | None, progress: bool) -> dict[str, list[set[int]]]:
        import json

        from tqdm.auto import tqdm

        from ..utils import atomic_write_text

        path = None
        if index_cache == "auto":
            path = Path(self.base.root) / "train" / "lvseg_mttr_object_ids.json"
        elif index_cache is not None:
            path = Path(index_cache)
        cached: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text())
            except (OSError, ValueError):
                logger.warning("ignoring the unreadable object-id cache %s", path)
        out: dict[str, list[set[int]]] = {}
        todo = []
        for vid, info in self.base.videos.items():
            entry = cached.get(vid)
            if isinstance(entry, dict) and entry.get("frames") == info["frames"]:
                out[vid] = [set(x) for x in entry["ids"]]
            else:
                todo.append(vid)
        for vid in tqdm(todo, desc="reading Ref-YouTube-VOS object ids", disable=not progress or not todo):
            frames = self.base.videos[vid]["frames"]
            per_frame = [_object_ids(self.annotation_dir / vid / f"{n}.png") for n in frames]
            cached[vid] = {"frames": frames, "ids": per_frame}
            out[vid] = [set(x) for x in per_frame]
        if todo and path is not None:
            try:
                atomic_write_text(path, json.dumps(cached))
            except OSError as exc:
                logger.warning("could not write the object-id cache %s (%s); it is rebuilt on the next run", path, exc)
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np

        from ..data._common import load_index_mask, load_rgb, stack_frames, target_fields

        vid, exp_id, ref, positions = self.samples[index]
        info = self.base.videos[vid]
        names = [info["frames"][i] for i in positions]
        frames = stack_frames((load_rgb(self.base.image_dir / vid / f"{n}.jpg") for n in names), f"video {vid!r}")
        maps: dict[str, np.ndarray] = {}
        for n in names:  # one read per distinct frame (short videos repeat their last frame)
            if n not in maps:
                maps[n] = load_index_mask(self.annotation_dir / vid / f"{n}.png")
        id_maps = torch.from_numpy(np.stack([maps[n] for n in names]).astype(np.int64))  # [T, H, W]
        obj_ids = [int(k) for k in torch.unique(id_maps).tolist() if k != 0]
        object_masks = torch.stack([id_maps == k for k in obj_ids])  # [N, T, H, W]
        referred = obj_ids.index(ref)
        sample: dict[str, Any] = {
            "frames": frames,
            "text": info["expressions"][exp_id]["exp"],
            "video": vid,
            "exp_id": exp_id,
            "frame_ids": names,
            "frame_indices": torch.tensor(positions, dtype=torch.int64),
            "orig_size": torch.tensor(frames.shape[1:3], dtype=torch.int64),
            "obj_ids": obj_ids,
            "object_masks": object_masks,
            "referred_index": referred,
            **target_fields(object_masks[referred]),
        }
        return self.transform(sample) if self.transform is not None else sample


def ytvos_mttr_transforms(short_side: int = 360, max_size: int = 640, flip: bool = True) -> Callable[[dict], dict]:
    """MTTR's Ref-YouTube-VOS training augmentation (``configs/refer_youtube_vos.yaml``): the A2D pipeline of
    :func:`a2d_mttr_transforms` (text clean-up, flip p 0.5 with "left"/"right" swapped, no crop) with the short
    side resized to 360 (long side at most 640). ImageNet normalisation follows in the trainer."""
    return a2d_mttr_transforms(short_side=short_side, max_size=max_size, flip=flip)


def ytvos_mttr_data(root: str | Path, window: int = YTVOS_WINDOW) -> tuple[Dataset, None]:
    """Ref-YouTube-VOS ``train`` at ``root`` as MTTR trains on it: :class:`YTVOSInstances` (``window``-frame
    clips, all objects of the clip as targets) with :func:`ytvos_mttr_transforms`. No validation set: the official
    valid split has no public masks (the competition server scores it)."""
    return YTVOSInstances(root, window, transform=ytvos_mttr_transforms()), None

"""JHMDB-Sentences (Gavrilyuk et al., CVPR 2018) read in its official layout; evaluation only.

Layout (``root`` is the ``jhmdb_sentences`` folder)::

    Rename_Images/<action>/<video>/<frame:05d>.png     frames, 1-based
    puppet_mask/<action>/<video>/puppet_mask.mat       ``part_mask``: uint8 (H, W, N) -- mask k <-> frame k+1
    jhmdb_annotation.txt                               CSV with header: video_id, query (928 rows, one per video)

The protocol (MTTR, followed by ReferFormer and later work) scores three frames per video, drawn once at random
by MTTR and shipped as a metadata file; :data:`lvseg.data._jhmdb_frames.MTTR_EVAL_FRAMES` holds those frames, so
the default ``eval_frames="mttr"`` reproduces the published sample list exactly. Frames beyond the last mask are
ignored, as in MTTR.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lvseg.data._common import (
    centered_window,
    check_split,
    load_rgb,
    require_dir,
    require_file,
    stack_frames,
    target_fields,
)
from lvseg.data._jhmdb_frames import MTTR_EVAL_FRAMES
from lvseg.errors import DatasetError, InvalidInputError

logger = logging.getLogger("lvseg.data.jhmdb")

__all__ = ["JHMDBSentences", "read_puppet_mask"]

_HINT = "Get JHMDB (frames + puppet masks) and jhmdb_annotation.txt and pass the jhmdb_sentences folder."


def read_puppet_mask(path: Path) -> np.ndarray:
    """All masks of a JHMDB video, ``bool [N, H, W]`` (``part_mask`` is stored as (H, W, N))."""
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetError(f"mask file not found: '{path}' is missing; re-extract puppet_mask.")
    try:
        data = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DatasetError(f"cannot read '{path}' ({exc}); the .mat file is corrupt.") from exc
    if "part_mask" not in data:
        raise DatasetError(f"'{path}' has no 'part_mask' variable; it is not a JHMDB puppet_mask.mat.")
    m = np.asarray(data["part_mask"])
    if m.ndim == 2:
        m = m[:, :, None]
    return m.transpose(2, 0, 1) > 0


class JHMDBSentences(Dataset):
    """JHMDB-Sentences ``test`` (the only split): one sample per (video, evaluated frame).

    Args:
        root: the ``jhmdb_sentences`` folder.
        split: ``"test"``.
        eval_frames: ``"mttr"`` (the three published frames per video) or ``"all"`` (every frame with a mask).
        num_frames, stride: the clip centred on the evaluated frame (MTTR's window, clamped at the ends).
        transform: callable applied to each sample dict.

    A sample has ``frames`` ``uint8 [T, H, W, 3]``, ``text``, ``video``, ``action``, ``frame_idx`` (1-based),
    ``image_id`` (``v_<video>_f_<frame>``, MTTR's COCO id), ``frame_indices`` ``int64 [T]`` (0-based),
    ``center_index``, ``orig_size``, ``object_masks`` ``bool [1, T, H, W]``, ``masks`` ``bool [T, H, W]`` with
    only the centre frame annotated (``annotated``), ``boxes`` and ``valid``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        *,
        eval_frames: Literal["mttr", "all"] = "mttr",
        num_frames: int = 8,
        stride: int = 1,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "JHMDB-Sentences root", _HINT)
        self.split = check_split(split, ("test",), "JHMDBSentences")
        if eval_frames not in ("mttr", "all"):
            raise InvalidInputError(f"eval_frames must be 'mttr' or 'all', got {eval_frames!r}.")
        centered_window(0, num_frames, 1, stride)  # validates
        self.num_frames, self.stride, self.transform = num_frames, stride, transform
        ann_path = require_file(self.root / "jhmdb_annotation.txt", "jhmdb_annotation.txt", _HINT)
        with open(ann_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"video_id", "query"} <= set(reader.fieldnames or []):
                raise DatasetError(f"'{ann_path}' needs a header with the columns video_id and query.")
            rows = [(r["video_id"], r["query"]) for r in reader]
        image_root = require_dir(self.root / "Rename_Images", "JHMDB frames folder", _HINT)
        actions = {p.name: p.parent.name for p in image_root.glob("*/*") if p.is_dir()}
        self.videos: dict[str, dict] = {}
        self.samples: list[tuple[str, str, int]] = []
        for video, query in rows:
            if video not in actions:
                raise DatasetError(
                    f"video {video!r} is listed in '{ann_path}' but there is no folder "
                    f"'{image_root}/<action>/{video}'; re-extract Rename_Images."
                )
            action = actions[video]
            frames_dir = image_root / action / video
            mask_path = self.root / "puppet_mask" / action / video / "puppet_mask.mat"
            require_file(mask_path, f"puppet mask of {video!r}", _HINT)
            num_png = sum(1 for p in frames_dir.iterdir() if p.suffix == ".png")
            if num_png == 0:  # eval_frames="all" would otherwise drop the video from the evaluation silently
                raise DatasetError(
                    f"the frame folder '{frames_dir}' of video {video!r} holds no .png frames; "
                    "re-extract Rename_Images."
                )
            self.videos[video] = {
                "action": action,
                "frames_dir": frames_dir,
                "mask_path": mask_path,
                "num_png": num_png,
            }
            if eval_frames == "mttr":
                if video not in MTTR_EVAL_FRAMES:
                    raise DatasetError(
                        f"video {video!r} is not in MTTR's evaluation list; this is not the "
                        "official JHMDB-Sentences release (use eval_frames='all')."
                    )
                chosen: list[int] | None = list(MTTR_EVAL_FRAMES[video][1])
            else:
                chosen = None  # every masked frame, resolved below
            if chosen is None:
                total = min(num_png, len(read_puppet_mask(mask_path)))
                if total == 0:
                    raise DatasetError(
                        f"'{mask_path}' holds no mask: video {video!r} would add no sample; re-extract puppet_mask."
                    )
                chosen = list(range(1, total + 1))
            for f in chosen:
                self.samples.append((video, query, f))
        logger.info("JHMDB-Sentences: %d videos, %d samples", len(self.videos), len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video, query, frame_idx = self.samples[index]
        info = self.videos[video]
        all_masks = read_puppet_mask(info["mask_path"])  # [N, H, W]
        total = min(info["num_png"], len(all_masks))  # frames beyond the last mask are dropped
        if not 1 <= frame_idx <= total:
            raise DatasetError(f"frame {frame_idx} of {video!r} has no mask ({total} masked frames).")
        indices, pos = centered_window(frame_idx - 1, self.num_frames, total, self.stride)
        frames = stack_frames((load_rgb(info["frames_dir"] / f"{i + 1:05d}.png") for i in indices), f"video {video!r}")
        h, w = frames.shape[1:3]
        if all_masks.shape[1:] != (h, w):
            raise DatasetError(f"masks of {video!r} are {all_masks.shape[1:]} but its frames are {(h, w)}.")
        masks = torch.zeros((len(indices), h, w), dtype=torch.bool)
        masks[pos] = torch.from_numpy(all_masks[frame_idx - 1])
        annotated = torch.zeros(len(indices), dtype=torch.bool)
        annotated[pos] = True
        sample: dict[str, Any] = {
            "frames": frames,
            "text": query,
            "video": video,
            "action": info["action"],
            "frame_idx": frame_idx,
            "image_id": f"v_{video}_f_{frame_idx}",
            "frame_indices": torch.tensor(indices, dtype=torch.int64),
            "center_index": pos,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "object_masks": masks[None].clone(),
        }
        sample.update(target_fields(masks, annotated))
        return self.transform(sample) if self.transform is not None else sample

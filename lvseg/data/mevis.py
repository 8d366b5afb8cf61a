"""MeViS (Ding et al., ICCV 2023; motion expressions video segmentation) read in its official layout.

Layout (``root`` holds one folder per split)::

    <split>/JPEGImages/<video>/<frame>.jpg
    <split>/meta_expressions.json     {"videos": {vid: {"frames": [...], "expressions": {exp_id: {"exp", "obj_id",
                                        "anno_id"}}}}}  (valid: "exp" only)
    <split>/mask_dict.json            {anno_id: [COCO RLE or null, one per entry of "frames"]}  (train, valid_u)

Splits: ``train`` (1,662 videos), ``valid_u`` (50, with ground truth), ``valid`` (140, scored on the server).
One expression may refer to several objects (``anno_id`` is a list): the ground truth is their union, as in the
official ``tools/eval_mevis.py``; MeViS v2 "no-target" expressions have an empty list and an empty mask.
``mask_dict.json`` is read lazily (see :mod:`lvseg.data._lazyjson`), never parsed whole.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from lvseg.data._common import (
    ClipSampling,
    check_split,
    load_rgb,
    require_dir,
    sample_frame_indices,
    stack_frames,
    target_fields,
)
from lvseg.data._lazyjson import LazyJsonObject
from lvseg.data.ytvos import read_meta_expressions
from lvseg.errors import DatasetError

logger = logging.getLogger("lvseg.data.mevis")

__all__ = ["MeViS"]

_HINT = "Download MeViS (see docs/datasets.md) and pass the folder that holds train/, valid_u/ and valid/."


class MeViS(Dataset):
    """MeViS ``train``, ``valid_u`` or ``valid``, read lazily per sample.

    Args:
        root: folder holding the split folders.
        split: ``"train"``, ``"valid_u"`` or ``"valid"``.
        sampling: :class:`ClipSampling` (default: every frame, one sample per expression).
        transform: callable applied to each sample dict.

    A sample has the keys of :class:`lvseg.data.RefYouTubeVOS` samples; with ground truth also ``obj_ids``
    (``list[int]``), ``anno_ids`` (``list[str]``), ``object_masks`` ``bool [N, T, H, W]`` (one per ``anno_id``,
    ``N`` may be 0) and ``masks`` ``bool [T, H, W]`` = their union.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        sampling: ClipSampling | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "MeViS root", _HINT)
        self.split = check_split(split, ("train", "valid_u", "valid"), "MeViS")
        self.sampling = sampling or ClipSampling()
        self.transform = transform
        split_dir = require_dir(self.root / self.split, f"MeViS {self.split} folder", _HINT)
        self.image_dir = require_dir(split_dir / "JPEGImages", f"MeViS {self.split} frames folder", _HINT)
        videos = read_meta_expressions(split_dir / "meta_expressions.json")
        mask_path = split_dir / "mask_dict.json"
        self.mask_dict: LazyJsonObject | None = None
        if self.split != "valid":
            if not mask_path.is_file():
                raise DatasetError(f"MeViS {self.split} masks not found: '{mask_path}' does not exist. {_HINT}")
            self.mask_dict = LazyJsonObject(mask_path)

        self.videos: dict[str, dict] = {}
        self.samples: list[tuple[str, str, int]] = []
        for vid, entry in videos.items():
            if not (self.image_dir / vid).is_dir():
                raise DatasetError(
                    f"video {vid!r} is listed in meta_expressions.json but its frame folder "
                    f"'{self.image_dir / vid}' is missing; re-extract the {self.split} archive."
                )
            listed = list(entry["frames"])
            order = sorted(range(len(listed)), key=lambda i: listed[i])  # present frames by name
            exps = {}
            for exp_id, exp in entry["expressions"].items():
                item: dict[str, Any] = {"exp": exp["exp"]}
                if self.mask_dict is not None:
                    anno_ids = [str(a) for a in exp.get("anno_id", [])]
                    for a in anno_ids:
                        if a not in self.mask_dict:
                            raise DatasetError(
                                f"expression {exp_id!r} of video {vid!r} refers to anno_id {a!r}, "
                                f"which is not in '{mask_path}'."
                            )
                    item["anno_ids"] = anno_ids
                    item["obj_ids"] = [int(o) for o in exp.get("obj_id", [])]
                exps[exp_id] = item
                for anchor in self.sampling.anchors(len(listed)):
                    self.samples.append((vid, exp_id, anchor))
            self.videos[vid] = {"listed": listed, "order": order, "expressions": exps}
        logger.info("MeViS %s: %d videos, %d samples", self.split, len(self.videos), len(self.samples))

    @property
    def has_ground_truth(self) -> bool:
        return self.mask_dict is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid, exp_id, anchor = self.samples[index]
        info = self.videos[vid]
        exp = info["expressions"][exp_id]
        picks = sample_frame_indices(len(info["order"]), anchor, self.sampling, random)
        positions = [info["order"][i] for i in picks]  # index into the file's "frames" list (and mask lists)
        names = [info["listed"][p] for p in positions]
        frames = stack_frames((load_rgb(self.image_dir / vid / f"{n}.jpg") for n in names), f"video {vid!r}")
        h, w = frames.shape[1:3]
        sample: dict[str, Any] = {
            "frames": frames,
            "text": exp["exp"],
            "video": vid,
            "exp_id": exp_id,
            "frame_ids": names,
            "frame_indices": torch.tensor(picks, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        if self.mask_dict is not None:
            per_object = []
            for a in exp["anno_ids"]:
                rles = self.mask_dict[a]
                if len(rles) != len(info["listed"]):
                    raise DatasetError(
                        f"mask_dict entry {a!r} has {len(rles)} frames but video {vid!r} lists "
                        f"{len(info['listed'])}; the annotation file does not match the videos."
                    )
                per_object.append(np.stack([self._decode(rles[p], h, w, vid, a) for p in positions]))
            object_masks = (
                torch.from_numpy(np.stack(per_object))
                if per_object
                else torch.zeros((0, len(names), h, w), dtype=torch.bool)
            )
            sample["obj_ids"] = list(exp["obj_ids"])
            sample["anno_ids"] = list(exp["anno_ids"])
            sample["object_masks"] = object_masks
            sample.update(target_fields(object_masks.any(dim=0)))
        return self.transform(sample) if self.transform is not None else sample

    @staticmethod
    def _decode(rle: dict | None, h: int, w: int, vid: str, anno_id: str) -> np.ndarray:
        if rle is None:  # object absent in this frame
            return np.zeros((h, w), dtype=bool)
        if tuple(rle.get("size", ())) != (h, w):
            raise DatasetError(
                f"mask of anno_id {anno_id!r} in video {vid!r} has size {rle.get('size')} but the frames are {[h, w]}."
            )
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            coded = mask_utils.frPyObjects(rle, h, w)
        else:
            coded = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(coded).astype(bool)

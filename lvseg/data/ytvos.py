"""Ref-YouTube-VOS (Seo et al., ECCV 2020; the 2021 competition release) read in its official layout.

Layout (``root`` is the folder that holds ``train/``, ``valid/`` and ``meta_expressions/``)::

    train/JPEGImages/<video>/<frame>.jpg
    train/Annotations/<video>/<frame>.png              palette PNG, pixel value = object id, 0 = background
    valid/JPEGImages/<video>/<frame>.jpg               507 videos: competition valid (202) + test (305)
    meta_expressions/{train,valid,test}/meta_expressions.json

``meta_expressions.json`` is ``{"videos": {video: {"expressions": {exp_id: {"exp": text, "obj_id": "k"}},
"frames": [names]}}}``; ``obj_id`` is present in train only. The ``valid`` file also lists the 305 competition
*test* videos, which are removed using ``meta_expressions/test/meta_expressions.json`` (leaving the 202 videos the
server scores), as MTTR/ReferFormer/ReferDINO do.

Ground truth for ``valid``/``test`` does not exist in the official release; a folder in the train layout
(``Annotations/`` + ``meta_expressions.json`` with ``obj_id``) can be given as ``gt_root`` -- the Shapes
generator writes one as ``<root>/<split>_gt``, which is picked up automatically.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lvseg.data._common import (
    ClipSampling,
    check_split,
    load_index_mask,
    load_rgb,
    read_json,
    require_dir,
    sample_frame_indices,
    stack_frames,
    target_fields,
)
from lvseg.errors import DatasetError

logger = logging.getLogger("lvseg.data.ytvos")

__all__ = ["RefYouTubeVOS", "read_meta_expressions", "referred_ids"]

Transform = Callable[[dict[str, Any]], dict[str, Any]]

_COMPETITION_VALID_VIDEOS = 507  # valid + test videos in the 2021 competition's valid meta file
_HINT = (
    "Download Ref-YouTube-VOS from the competition page (see docs/datasets.md) and pass the folder that holds "
    "train/, valid/ and meta_expressions/."
)


def read_meta_expressions(path: Path) -> dict[str, dict]:
    """The ``videos`` table of a ``meta_expressions.json`` file, validated."""
    data = read_json(path, "meta_expressions.json", _HINT)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise DatasetError(f"'{path}' is not a meta_expressions.json: expected {{\"videos\": {{...}}}} at the top.")
    for vid, entry in data["videos"].items():
        if not isinstance(entry, dict) or "frames" not in entry or "expressions" not in entry:
            raise DatasetError(f"'{path}': video {vid!r} lacks 'frames' or 'expressions'.")
        if not entry["frames"]:  # would surface only at its first sample, without its name
            raise DatasetError(f"'{path}': video {vid!r} lists no frames; re-download meta_expressions.json.")
    return data["videos"]


def referred_ids(exp: dict, where: str) -> list[int]:
    """Object ids an expression refers to: ``"obj_id"`` is a string (Ref-YouTube-VOS) or a list (MeViS/Shapes)."""
    ref = exp.get("obj_id")
    if ref is None:
        raise DatasetError(f"{where} has no 'obj_id'; ground truth needs the train-style meta_expressions.json.")
    items = ref if isinstance(ref, list) else [ref]
    try:
        return [int(x) for x in items]
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where} has a non-integer obj_id {ref!r}.") from exc


class RefYouTubeVOS(Dataset):
    """Ref-YouTube-VOS ``train``, ``valid`` (202 videos) or ``test`` (305 videos), read lazily per sample.

    Args:
        root: folder holding ``train/``, ``valid/``, ``meta_expressions/``.
        split: ``"train"``, ``"valid"`` (alias ``"val"``) or ``"test"``.
        sampling: :class:`ClipSampling`; the default gives one sample per (video, expression) with all frames
            (the inference protocol); ``ClipSampling(num_frames=5, mode="referformer")`` is ReferFormer's training.
        transform: callable applied to each sample dict (see :mod:`lvseg.data.transforms`).
        gt_root: ground truth for ``valid``/``test`` in the train layout; ``"auto"`` uses ``<root>/<split>_gt``
            when it exists, ``None`` never loads ground truth there.

    A sample is a dict with ``frames`` ``uint8 [T, H, W, 3]``, ``text`` (the expression exactly as in the file),
    ``video``, ``exp_id``, ``frame_ids`` (names), ``frame_indices`` ``int64 [T]``, ``orig_size`` ``int64 [2]``
    (H, W), and, when ground truth exists, ``obj_ids``, ``masks`` ``bool [T, H, W]`` (union of referred objects),
    ``object_masks`` ``bool [N, T, H, W]``, ``boxes`` ``float32 [T, 4]``, ``valid`` and ``annotated`` ``bool [T]``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        sampling: ClipSampling | None = None,
        transform: Transform | None = None,
        gt_root: str | Path | None = "auto",
    ) -> None:
        self.root = require_dir(Path(root), "Ref-YouTube-VOS root", _HINT)
        self.split = check_split(split, ("train", "valid", "test"), "RefYouTubeVOS", {"val": "valid"})
        self.sampling = sampling or ClipSampling()
        self.transform = transform
        meta_dir = self.root / "meta_expressions"
        videos = read_meta_expressions(meta_dir / self.split / "meta_expressions.json")
        if self.split == "valid":
            videos = self._drop_test_videos(videos, meta_dir / "test" / "meta_expressions.json")

        self.image_dir = self.root / self.split / "JPEGImages"
        if self.split == "test" and not self.image_dir.is_dir():  # the competition ships test frames inside valid/
            self.image_dir = self.root / "valid" / "JPEGImages"
        require_dir(self.image_dir, f"Ref-YouTube-VOS {self.split} frames folder", _HINT)

        self.annotation_dir: Path | None = None
        gt_videos = videos
        if self.split == "train":
            self.annotation_dir = require_dir(self.root / "train" / "Annotations", "Ref-YouTube-VOS train masks", _HINT)
        elif gt_root is not None:
            gt = self.root / f"{self.split}_gt" if gt_root == "auto" else Path(gt_root)
            if gt.is_dir():
                self.annotation_dir = require_dir(gt / "Annotations", "ground-truth masks folder")
                gt_videos = read_meta_expressions(gt / "meta_expressions.json")
                logger.info("Ref-YouTube-VOS %s: ground truth from %s", self.split, gt)
            elif gt_root != "auto":
                raise DatasetError(f"ground-truth folder not found: '{gt}' is not a directory.")

        self.videos: dict[str, dict] = {}
        self.samples: list[tuple[str, str, int]] = []
        for vid, entry in videos.items():
            if not (self.image_dir / vid).is_dir():
                raise DatasetError(
                    f"video {vid!r} is listed in meta_expressions.json but its frame folder "
                    f"'{self.image_dir / vid}' is missing; re-extract the {self.split} archive."
                )
            frames = sorted(entry["frames"])
            exps = {}
            for exp_id, exp in entry["expressions"].items():
                item = {"exp": exp["exp"]}
                if self.annotation_dir is not None:
                    gt_exp = gt_videos.get(vid, {}).get("expressions", {}).get(exp_id)
                    if gt_exp is None:
                        raise DatasetError(f"ground truth lacks expression {exp_id!r} of video {vid!r}.")
                    item["obj_ids"] = referred_ids(gt_exp, f"expression {exp_id!r} of video {vid!r}")
                exps[exp_id] = item
                for anchor in self.sampling.anchors(len(frames)):
                    self.samples.append((vid, exp_id, anchor))
            self.videos[vid] = {"frames": frames, "expressions": exps}
        logger.info("Ref-YouTube-VOS %s: %d videos, %d samples", self.split, len(self.videos), len(self.samples))

    @staticmethod
    def _drop_test_videos(videos: dict[str, dict], test_meta: Path) -> dict[str, dict]:
        if test_meta.is_file():
            test = read_meta_expressions(test_meta)
            kept = {v: e for v, e in videos.items() if v not in test}
            logger.info(
                "Ref-YouTube-VOS valid: removed %d competition test videos, %d remain",
                len(videos) - len(kept),
                len(kept),
            )
            return kept
        if len(videos) == _COMPETITION_VALID_VIDEOS:
            raise DatasetError(
                f"'{test_meta}' is missing: the valid meta_expressions.json lists the 202 valid and 305 test videos "
                "together and the test list is needed to keep the 202 that the server scores. Get "
                "meta_expressions/test/meta_expressions.json from the competition page (see docs/datasets.md)."
            )
        return videos

    @property
    def has_ground_truth(self) -> bool:
        """Whether samples carry ``masks`` (train, or valid/test with a ground-truth folder)."""
        return self.annotation_dir is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid, exp_id, anchor = self.samples[index]
        info = self.videos[vid]
        exp = info["expressions"][exp_id]
        indices = sample_frame_indices(len(info["frames"]), anchor, self.sampling, random)
        names = [info["frames"][i] for i in indices]
        frames = stack_frames((load_rgb(self.image_dir / vid / f"{n}.jpg") for n in names), f"video {vid!r}")
        sample: dict[str, Any] = {
            "frames": frames,
            "text": exp["exp"],
            "video": vid,
            "exp_id": exp_id,
            "frame_ids": names,
            "frame_indices": torch.tensor(indices, dtype=torch.int64),
            "orig_size": torch.tensor(frames.shape[1:3], dtype=torch.int64),
        }
        if self.annotation_dir is not None:
            obj_ids = exp["obj_ids"]
            # one read per distinct frame; clips may repeat frames
            cache: dict[str, np.ndarray] = {}
            for n in names:
                if n not in cache:
                    cache[n] = load_index_mask(self.annotation_dir / vid / f"{n}.png")
            ids = np.stack([cache[n] for n in names])  # [T, H, W]
            if ids.shape[1:] != tuple(frames.shape[1:3]):
                raise DatasetError(
                    f"masks of video {vid!r} are {ids.shape[1:]} but its frames are "
                    f"{tuple(frames.shape[1:3])}; the annotation and frame archives do not match."
                )
            object_masks = torch.from_numpy(np.stack([ids == k for k in obj_ids]))  # [N, T, H, W]
            sample["obj_ids"] = list(obj_ids)
            sample["object_masks"] = object_masks
            sample.update(target_fields(object_masks.any(dim=0)))
        return self.transform(sample) if self.transform is not None else sample

"""Ref-DAVIS17 (Khoreva et al., ACCV 2018) read from the DAVIS-2017 release and the MPI text annotations.

Layout (``root`` is what ReferFormer calls ``data/ref-davis``; no conversion step is needed)::

    DAVIS/JPEGImages/480p/<video>/<00000>.jpg
    DAVIS/Annotations_unsupervised/480p/<video>/<00000>.png     palette PNG, pixel value = object id
    DAVIS/ImageSets/2017/{train,val}.txt                          60 / 30 videos
    davis_text_annotations/Davis17_annot1.txt                     annotator 1, first-frame expressions (UTF-8)
    davis_text_annotations/Davis17_annot1_full_video.txt          annotator 1, full-video expressions (UTF-8)
    davis_text_annotations/Davis17_annot2.txt                     annotator 2, first-frame (Latin-1)
    davis_text_annotations/Davis17_annot2_full_video.txt          annotator 2, full-video (Latin-1)

Each text line is ``<video> <obj_id> "<expression>"``. Three video names in the text files differ from the DAVIS
folders and are mapped as ReferFormer does (``clasic-car``, ``dog-scale``, ``motor-bike``).

Every object has four expressions; ``exp_id = 4 * k + a`` for the ``k``-th object (by id) and ``a`` =
``0`` annotator 1 first-frame, ``1`` annotator 1 full-video, ``2`` annotator 2 first-frame, ``3`` annotator 2
full-video. ``a`` is the ``anno_a`` group of the official evaluation: each group is scored separately with the
DAVIS-2017 unsupervised protocol and the four results are averaged.
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
    require_dir,
    require_file,
    sample_frame_indices,
    stack_frames,
    target_fields,
)
from lvseg.errors import DatasetError

logger = logging.getLogger("lvseg.data.davis")

__all__ = ["RefDAVIS17", "ANNOTATION_FILES", "read_davis_expressions"]

# (file name, encoding, annotator 1/2, expression type) in the order of the anno_0..anno_3 groups
ANNOTATION_FILES: tuple[tuple[str, str, int, str], ...] = (
    ("Davis17_annot1.txt", "utf-8", 1, "first_frame"),
    ("Davis17_annot1_full_video.txt", "utf-8", 1, "full_video"),
    ("Davis17_annot2.txt", "latin-1", 2, "first_frame"),
    ("Davis17_annot2_full_video.txt", "latin-1", 2, "full_video"),
)
_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
_HINT = (
    "Unzip DAVIS-2017-Unsupervised-trainval-480p.zip (giving DAVIS/) and davis_text_annotations.zip into one "
    "folder and pass that folder (see docs/datasets.md)."
)


def read_davis_expressions(path: Path, encoding: str) -> dict[str, dict[int, str]]:
    """``{video: {obj_id: expression}}`` from one MPI annotation file."""
    out: dict[str, dict[int, str]] = {}
    with open(require_file(path, "Ref-DAVIS17 text annotation", _HINT), encoding=encoding) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 3 or not parts[1].isdigit():
                raise DatasetError(f"'{path}' line {lineno} is not '<video> <obj_id> \"<expression>\"': {line!r}")
            video = _NAME_FIXES.get(parts[0], parts[0])
            text = " ".join(parts[2:])
            if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
                text = text[1:-1]
            out.setdefault(video, {})[int(parts[1])] = text
    return out


class RefDAVIS17(Dataset):
    """Ref-DAVIS17 ``train`` (60 videos) or ``valid`` (30 videos, alias ``val``), read lazily per sample.

    A sample has the keys of :class:`lvseg.data.RefYouTubeVOS` samples plus ``annotator`` (the evaluation group
    0-3), ``annotator_id`` (1 or 2), ``expression_type`` (``"first_frame"`` or ``"full_video"``) and
    ``obj_ids`` (``[obj_id]``). Masks come from ``Annotations_unsupervised`` (pixel value == obj_id).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "valid",
        *,
        sampling: ClipSampling | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "Ref-DAVIS17 root", _HINT)
        self.split = check_split(split, ("train", "valid"), "RefDAVIS17", {"val": "valid"})
        self.sampling = sampling or ClipSampling()
        self.transform = transform
        davis = require_dir(self.root / "DAVIS", "DAVIS-2017 folder", _HINT)
        self.image_dir = require_dir(davis / "JPEGImages" / "480p", "DAVIS frames folder", _HINT)
        self.annotation_dir = require_dir(
            davis / "Annotations_unsupervised" / "480p", "DAVIS unsupervised annotations folder", _HINT
        )
        list_file = davis / "ImageSets" / "2017" / ("train.txt" if self.split == "train" else "val.txt")
        videos = [
            v.strip() for v in require_file(list_file, "DAVIS split list", _HINT).read_text().splitlines() if v.strip()
        ]
        texts = [
            read_davis_expressions(self.root / "davis_text_annotations" / name, enc)
            for name, enc, _, _ in ANNOTATION_FILES
        ]

        self.videos: dict[str, dict] = {}
        self.samples: list[tuple[str, str, int]] = []
        for vid in videos:
            folder = self.image_dir / vid
            if not folder.is_dir():
                raise DatasetError(
                    f"video {vid!r} is listed in '{list_file}' but its frame folder '{folder}' is "
                    "missing; re-extract the DAVIS archive."
                )
            frames = sorted(p.stem for p in folder.iterdir() if p.suffix == ".jpg")
            if not frames:  # an empty glob would otherwise surface as an unsampleable video much later
                raise DatasetError(
                    f"the frame folder '{folder}' of video {vid!r} holds no .jpg frames; re-extract "
                    "the DAVIS archive (DAVIS-2017-trainval-480p.zip)."
                )
            obj_ids = sorted(set().union(*(t.get(vid, {}).keys() for t in texts)))
            if not obj_ids:
                raise DatasetError(
                    f"video {vid!r} has no expression in davis_text_annotations/; the text "
                    "annotation files do not match this DAVIS release."
                )
            exps: dict[str, dict] = {}
            for k, obj in enumerate(obj_ids):
                for a, (name, _, annotator, kind) in enumerate(ANNOTATION_FILES):
                    text = texts[a].get(vid, {}).get(obj)
                    if text is None:
                        logger.warning("Ref-DAVIS17: %s has no expression for object %d of %s", name, obj, vid)
                        continue
                    exp_id = str(4 * k + a)
                    exps[exp_id] = {
                        "exp": text,
                        "obj_id": obj,
                        "annotator": a,
                        "annotator_id": annotator,
                        "expression_type": kind,
                    }
                    for anchor in self.sampling.anchors(len(frames)):
                        self.samples.append((vid, exp_id, anchor))
            self.videos[vid] = {"frames": frames, "expressions": exps}
        logger.info("Ref-DAVIS17 %s: %d videos, %d samples", self.split, len(self.videos), len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid, exp_id, anchor = self.samples[index]
        info = self.videos[vid]
        exp = info["expressions"][exp_id]
        indices = sample_frame_indices(len(info["frames"]), anchor, self.sampling, random)
        names = [info["frames"][i] for i in indices]
        frames = stack_frames((load_rgb(self.image_dir / vid / f"{n}.jpg") for n in names), f"video {vid!r}")
        ids = np.stack([load_index_mask(self.annotation_dir / vid / f"{n}.png") for n in names])
        if ids.shape[1:] != tuple(frames.shape[1:3]):
            raise DatasetError(
                f"masks of video {vid!r} are {ids.shape[1:]} but its frames are "
                f"{tuple(frames.shape[1:3])}; use the 480p frames with the 480p annotations."
            )
        object_masks = torch.from_numpy(ids == exp["obj_id"])[None]
        sample: dict[str, Any] = {
            "frames": frames,
            "text": exp["exp"],
            "video": vid,
            "exp_id": exp_id,
            "frame_ids": names,
            "frame_indices": torch.tensor(indices, dtype=torch.int64),
            "orig_size": torch.tensor(frames.shape[1:3], dtype=torch.int64),
            "obj_ids": [exp["obj_id"]],
            "annotator": exp["annotator"],
            "annotator_id": exp["annotator_id"],
            "expression_type": exp["expression_type"],
            "object_masks": object_masks,
        }
        sample.update(target_fields(object_masks[0]))
        return self.transform(sample) if self.transform is not None else sample

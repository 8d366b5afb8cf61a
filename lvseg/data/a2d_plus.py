"""A2D-S+ (Locater, Liang et al., TPAMI 2023): the NORM / MUL / SPAT / TEMP test subsets in Locater's layout.

Layout (``root`` is Locater's data root; the files come from the authors' Baidu share)::

    A2D_SUBSET/<TYPE>/allPngs320H/<video>/<frame>.png          every frame, 320 px high
    A2D_SUBSET/<TYPE>/mask/<video>_<obj>_<frame>.pth           one tensor (H, W) per (object, annotated frame)
    A2D_SUBSET/<TYPE>/vid_frame_dict.pth                       {video: number of frames}
    A2D_SUBSET/<TYPE>/A2D_<TYPE>_test_expressions.json         {video: {"frames": [...],
                                                                 "expressions": {obj: {"exp", "labels"}}}}

``TYPE`` is ``NORM`` (A2D-Sentences test in this format), ``MUL``, ``SPAT`` or ``TEMP``. The README and the code
disagree on names; the code wins and both spellings are accepted: the README's ``A2D_SUBSET/A2D_<TYPE>/`` folder
and ``vid_frames_dict.pth`` (the code's A2D name is ``vid_frame_dict.pth``). One sample per (video, object) with
every listed frame; ``labels`` are the frames with ground truth. Locater corrects 15 misspelled queries at test
time (``fix_queries=True`` applies the same table to the lower-cased text).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lvseg.data._common import check_split, load_rgb, read_json, require_dir, stack_frames, target_fields
from lvseg.errors import CheckpointError, DatasetError
from lvseg.utils import torch_load

logger = logging.getLogger("lvseg.data.a2d_plus")

__all__ = ["A2DSPlus", "LOCATER_QUERY_FIXES"]

#: Misspelled A2D queries (lower-cased) and Locater's corrections (``dataloader/vid_anchor_test.py``).
LOCATER_QUERY_FIXES: dict[str, str] = {
    "the peson in red is standing": "the person in red is standing",
    "rd black formula car riding on the right side of the track": (
        "red black formula car riding on the right side of the track"
    ),
    "white standing near the building": "person standing near the building",
    "red black is riding on the left": "red black car is riding on the left",
    "solder in camouflage uniforms crawling ": "soldier in camouflage uniforms crawling",
    "white in shirt is walking in the airport terminal": "person in shirt is walking in the airport terminal",
    "the left with yellow t shirt on the left running": "the left man with yellow t shirt on the left running",
    "black is climbing the stairs": "man is climbing the stairs",
    "white black is walking on the beach": "white black dog is walking on the beach",
    "on in blue running on the left": "man in blue running on the left",
    "a blue bar is sitting on the floor in the middle": "a blue ball is sitting on the floor in the middle",
    "solder crawling on the ground": "soldier crawling on the ground",
    "white brown is eating  the corn": "white brown dog is eating the corn",
    "white in white tracksuit is running during competition": "man in white tracksuit is running during competition",
    "white licking her claws on the left": "white cat licking her claws on the left",
}
_TYPES = ("NORM", "MUL", "SPAT", "TEMP")
_HINT = "Get Locater's A2D_SUBSET data (see docs/datasets.md) and pass the folder that holds A2D_SUBSET/."


def _load_pth(path: Path, expected: str) -> Any:
    """A tensor file of the dataset (read without running pickled code); a damaged one is a DatasetError."""
    try:
        return torch_load(path, expected=expected)
    except CheckpointError as exc:
        raise DatasetError(f"{exc}. {_HINT}") from exc


class A2DSPlus(Dataset):
    """One A2D-S+ subset (``split`` = ``"NORM"``, ``"MUL"``, ``"SPAT"`` or ``"TEMP"``; case-insensitive).

    A sample has ``frames`` ``uint8 [T, H, W, 3]`` (every listed frame), ``text``, ``video``, ``obj_id`` (str, as
    in the mask file names), ``frame_ids``, ``orig_size``, ``num_video_frames`` (from ``vid_frame_dict.pth``,
    or None), ``object_masks`` ``bool [1, T, H, W]``, ``masks`` ``bool [T, H, W]``, ``annotated`` (frames listed
    in ``labels``), ``valid`` and ``boxes``. An annotated frame may have an empty mask (TEMP), which Locater
    scores with IoU 1 when the prediction is empty too.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "MUL",
        *,
        fix_queries: bool = True,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "A2D-S+ root", _HINT)
        self.split = check_split(split.upper(), _TYPES, "A2DSPlus")
        self.transform, self.fix_queries = transform, fix_queries
        base = self.root / "A2D_SUBSET"
        folder = base / self.split if (base / self.split).is_dir() else base / f"A2D_{self.split}"
        self.folder = require_dir(folder, f"A2D-S+ {self.split} folder", _HINT)
        self.image_dir = require_dir(folder / "allPngs320H", f"A2D-S+ {self.split} frames folder", _HINT)
        self.mask_dir = require_dir(folder / "mask", f"A2D-S+ {self.split} masks folder", _HINT)
        table = read_json(folder / f"A2D_{self.split}_test_expressions.json", "A2D-S+ expressions", _HINT)
        if not isinstance(table, dict):
            raise DatasetError(f"'{folder}/A2D_{self.split}_test_expressions.json' must map video ids to entries.")
        self.num_video_frames: dict[str, int] = {}
        for name in ("vid_frame_dict.pth", "vid_frames_dict.pth"):
            if (folder / name).is_file():
                loaded = _load_pth(folder / name, "the A2D-S+ frame-count table (a dict video -> frames)")
                try:
                    self.num_video_frames = {str(k): int(v) for k, v in loaded.items()}
                except (AttributeError, TypeError, ValueError) as exc:
                    raise DatasetError(
                        f"'{folder / name}' is not a {{video: number of frames}} dict (it holds "
                        f"{type(loaded).__name__}); re-extract it, or delete it (it only fills num_video_frames)."
                    ) from exc
                break
        self.samples: list[dict[str, Any]] = []
        for video, entry in table.items():
            if not (self.image_dir / video).is_dir():
                raise DatasetError(
                    f"video {video!r} is listed in the expressions file but '{self.image_dir / video}'"
                    " is missing; re-extract allPngs320H."
                )
            frames = sorted(set(entry["frames"]))
            for obj, exp in entry["expressions"].items():
                self.samples.append(
                    {
                        "video": video,
                        "obj": str(obj),
                        "exp": exp["exp"],
                        "frames": frames,
                        "labels": set(exp.get("labels", [])),
                    }
                )
        logger.info("A2D-S+ %s: %d videos, %d samples", self.split, len(table), len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def text_of(self, raw: str) -> str:
        """The query as evaluated: Locater's typo fixes on the lower-cased text (when ``fix_queries``)."""
        if not self.fix_queries:
            return raw
        return LOCATER_QUERY_FIXES.get(raw.lower(), raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.samples[index]
        video, obj, names = item["video"], item["obj"], item["frames"]
        frames = stack_frames((load_rgb(self.image_dir / video / f"{n}.png") for n in names), f"video {video!r}")
        h, w = frames.shape[1:3]
        masks = torch.zeros((len(names), h, w), dtype=torch.bool)
        annotated = torch.zeros(len(names), dtype=torch.bool)
        for t, n in enumerate(names):
            if n not in item["labels"]:
                continue
            path = self.mask_dir / f"{video.replace('/', '_')}_{obj}_{n}.pth"
            if not path.is_file():
                raise DatasetError(f"mask not found: '{path}' (frame {n} of {video!r} is in 'labels').")
            m = _load_pth(path, "an A2D-S+ mask (a tensor)")
            m = torch.as_tensor(m).squeeze()
            if tuple(m.shape) != (h, w):
                raise DatasetError(f"mask '{path}' is {tuple(m.shape)} but the frames are {(h, w)}.")
            masks[t] = m > 0
            annotated[t] = True
        sample: dict[str, Any] = {
            "frames": frames,
            "text": self.text_of(item["exp"]),
            "video": video,
            "obj_id": obj,
            "frame_ids": list(names),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "num_video_frames": self.num_video_frames.get(video),
            "object_masks": masks[None].clone(),
        }
        sample.update(target_fields(masks, annotated))
        return self.transform(sample) if self.transform is not None else sample

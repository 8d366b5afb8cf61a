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

:class:`JHMDBSentencesLocater` reads JHMDB-Sentences in Locater's reformatted layout (the same json schema and
``.pth`` masks; ``dataloader/vid_anchor_test.py``, ``dataset == 'JHMDB'``)::

    JHMDB/images/<category>/<video>/<frame>.png                every frame
    JHMDB/mask/<category>_<video>_<obj>_<frame>.pth            one tensor (H, W) per (object, annotated frame)
    JHMDB/vid_frames_dict.pth                                  {category: {video: number of frames}}
    JHMDB/JHMDB_test_expressions.json                          {"<category>/<video>": {"frames": [...],
                                                                 "expressions": {obj: {"exp", "labels"}}}}
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

__all__ = ["A2DSPlus", "JHMDBSentencesLocater", "LOCATER_QUERY_FIXES"]

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
_JHMDB_HINT = (
    "Get Locater's reformatted JHMDB-S annotations and the JHMDB frames (see docs/models/locater.md) and pass the "
    "folder that holds JHMDB/."
)


def _load_pth(path: Path, expected: str, hint: str = _HINT) -> Any:
    """A tensor file of the dataset (read without running pickled code); a damaged one is a DatasetError."""
    try:
        return torch_load(path, expected=expected)
    except CheckpointError as exc:
        raise DatasetError(f"{exc}. {hint}") from exc


class _LocaterTestSet(Dataset):
    """Locater's test layout: a json of sequences with their frames and objects, one ``.pth`` mask per (object,
    annotated frame); one sample per (sequence, object) with every listed frame (sorted, duplicates dropped).

    Subclasses set ``name`` (for messages), ``hint`` (how to get the data) and call :meth:`_index`."""

    name = "Locater test set"
    hint = _HINT

    def __init__(
        self, *, fix_queries: bool = True, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ) -> None:
        self.transform, self.fix_queries = transform, fix_queries
        self.num_video_frames: dict[str, int] = {}
        self.samples: list[dict[str, Any]] = []

    def _index(self, table_path: Path, image_dir: Path, mask_dir: Path, frames_folder: str) -> None:
        """Read the expressions json; ``frames_folder`` names the frames folder in the error for a missing video."""
        self.image_dir, self.mask_dir = image_dir, mask_dir
        table = read_json(table_path, f"{self.name} expressions", self.hint)
        if not isinstance(table, dict):
            raise DatasetError(f"'{table_path}' must map sequence ids to entries.")
        for video, entry in table.items():
            if not (self.image_dir / video).is_dir():
                raise DatasetError(
                    f"video {video!r} is listed in the expressions file but '{self.image_dir / video}'"
                    f" is missing; re-extract {frames_folder}."
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
        logger.info("%s: %d videos, %d samples", self.name, len(table), len(self.samples))

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
            m = _load_pth(path, f"a {self.name} mask (a tensor)", self.hint)
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


class A2DSPlus(_LocaterTestSet):
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
        super().__init__(fix_queries=fix_queries, transform=transform)
        self.root = require_dir(Path(root), "A2D-S+ root", _HINT)
        self.split = check_split(split.upper(), _TYPES, "A2DSPlus")
        self.name = f"A2D-S+ {self.split}"
        base = self.root / "A2D_SUBSET"
        folder = base / self.split if (base / self.split).is_dir() else base / f"A2D_{self.split}"
        self.folder = require_dir(folder, f"A2D-S+ {self.split} folder", _HINT)
        image_dir = require_dir(folder / "allPngs320H", f"A2D-S+ {self.split} frames folder", _HINT)
        mask_dir = require_dir(folder / "mask", f"A2D-S+ {self.split} masks folder", _HINT)
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
        self._index(folder / f"A2D_{self.split}_test_expressions.json", image_dir, mask_dir, "allPngs320H")


class JHMDBSentencesLocater(_LocaterTestSet):
    """JHMDB-Sentences in Locater's reformatted layout (``JHMDB/`` under ``root``; see the module docstring),
    scored with Locater's protocol (``lvseg evaluate MODEL --dataset jhmdb-locater --root ROOT``).

    Samples as :class:`A2DSPlus`'s; ``video`` is ``"<category>/<video>"`` (the json's key) and
    ``num_video_frames`` comes from the nested ``vid_frames_dict.pth`` (or None without it). Not the MTTR /
    ReferFormer JHMDB-Sentences layout (:class:`~lvseg.data.JHMDBSentences`): Locater's README calls its files
    "not compatible" with the original annotations. ``split`` is accepted for the CLI and must be ``"test"``.
    """

    name = "JHMDB-S (Locater layout)"
    hint = _JHMDB_HINT
    protocol = "jhmdb-locater"

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        *,
        fix_queries: bool = True,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(fix_queries=fix_queries, transform=transform)
        self.root = require_dir(Path(root), "JHMDB-S root", _JHMDB_HINT)
        self.split = check_split(split.lower(), ("test",), "JHMDBSentencesLocater")
        # the folder that holds JHMDB/ (the official --dataroot), or JHMDB/ itself
        folder = self.root / "JHMDB" if (self.root / "JHMDB").is_dir() else self.root
        self.folder = folder
        image_dir = require_dir(folder / "images", "JHMDB-S frames folder", _JHMDB_HINT)
        mask_dir = require_dir(folder / "mask", "JHMDB-S masks folder", _JHMDB_HINT)
        if (folder / "vid_frames_dict.pth").is_file():
            path = folder / "vid_frames_dict.pth"
            loaded = _load_pth(path, "the JHMDB-S frame-count table (a dict category -> video -> frames)", _JHMDB_HINT)
            try:
                self.num_video_frames = {
                    f"{category}/{video}": int(n) for category, videos in loaded.items() for video, n in videos.items()
                }
            except (AttributeError, TypeError, ValueError) as exc:
                raise DatasetError(
                    f"'{path}' is not a {{category: {{video: number of frames}}}} dict (it holds "
                    f"{type(loaded).__name__}); re-extract it, or delete it (it only fills num_video_frames)."
                ) from exc
        self._index(folder / "JHMDB_test_expressions.json", image_dir, mask_dir, "the JHMDB frames into images/")

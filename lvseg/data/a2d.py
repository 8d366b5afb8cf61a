"""A2D-Sentences (Gavrilyuk et al., CVPR 2018) read in its official layout, following MTTR's protocol.

Layout (``root`` holds ``Release/`` and ``text_annotations/``)::

    Release/videoset.csv                   no header; vid, label, start, end, height, width, frames, annotated,
                                           subset (0 = train, 1 = test); 3,782 rows
    Release/clips320H/<video>.mp4          the videos (or extracted frames, see ``frames_dir``)
    text_annotations/a2d_annotation.txt    CSV with header: video_id, instance_id, query (6,655 rows)
    text_annotations/a2d_missed_videos.txt videos without sentences, excluded from both splits
    text_annotations/a2d_annotation_with_instances/<video>/<frame:05d>.h5
                                           per annotated frame (1-based number): ``instance`` (ids), ``reMask``
                                           (MATLAB-transposed: (N, W, H), or (W, H) when N == 1), ``reBBox`` (4, N)

One sample per (sentence, annotated frame in which the sentence's instance appears) -- MTTR's and CMPC-V's rule;
frames where the instance is absent are not samples. The row with instance id ``"1 (copy)"`` (video
``T6bNPuKV-wY``) is a known annotation error and is dropped. Reading the per-frame ``.h5`` files needs h5py
(``pip install lvseg[datasets]``).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from lvseg.data._common import (
    ClipSampling,
    centered_window,
    check_split,
    load_rgb,
    require_dir,
    require_file,
    sample_frame_indices,
    stack_frames,
    target_fields,
)
from lvseg.data._video import count_and_read_frames
from lvseg.errors import DatasetError, InvalidInputError
from lvseg.utils import atomic_write_text

logger = logging.getLogger("lvseg.data.a2d")

__all__ = ["A2DSentences", "read_a2d_frame_annotation"]

_HINT = (
    "Get A2D (Release/) and the A2D-Sentences text annotations (text_annotations/) and pass the folder holding "
    "both (see docs/datasets.md)."
)
_BAD_INSTANCE = "1 (copy)"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise DatasetError(
            "A2D-Sentences masks are HDF5 files and need h5py: pip install h5py (or pip install lvseg[datasets])."
        ) from exc
    return h5py


def read_a2d_frame_annotation(path: Path) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Read one A2D ``.h5`` frame annotation: instance ids, masks ``bool [N, H, W]`` and boxes ``[N, 4]`` (xyxy)."""
    h5py = _h5py()
    if not path.is_file():
        raise DatasetError(f"annotation not found: '{path}' is missing; re-extract a2d_annotation_with_instances.")
    with h5py.File(path, "r") as f:
        instances = [int(round(float(v))) for v in np.asarray(f["instance"]).reshape(-1)]
        masks = np.asarray(f["reMask"])
        boxes = np.asarray(f["reBBox"]) if "reBBox" in f else np.zeros((4, len(instances)))
    if masks.ndim == 2:  # a single instance is stored as one 2-D array
        masks = masks[None]
    masks = masks.transpose(0, 2, 1) > 0  # stored as (N, W, H) by MATLAB
    boxes = boxes.reshape(4, -1).T.astype(np.float32)
    if masks.shape[0] != len(instances):
        raise DatasetError(f"'{path}' has {len(instances)} instance ids but {masks.shape[0]} masks.")
    return instances, masks, boxes


class A2DSentences(Dataset):
    """A2D-Sentences ``train`` or ``test``: a clip around each annotated frame of each sentence (centred, or drawn
    by ``sampling``).

    Args:
        root: folder holding ``Release/`` and ``text_annotations/``.
        split: ``"train"`` or ``"test"``.
        num_frames, stride: the clip: ``num_frames // 2`` frames before the annotated one and the rest after,
            ``stride`` apart, clamped at the video's ends (MTTR's window; its A2D models use 8 or 10 frames).
        sampling: draw the clip with :func:`lvseg.data.sample_frame_indices` around the annotated frame instead
            (it replaces ``num_frames``/``stride``, and needs ``sampling.num_frames``). With
            ``ClipSampling(num_frames=k, mode="referformer")`` this is LAVT-RS's A2D training clip
            (``data/a2d.py``): the annotated frame, one frame 1-3 before and one 1-3 after it (clamped to the
            video), for ``k > 3`` frames drawn at random from outside that local window, sorted; the annotated
            frame is the *first* clip position showing it (``sample_indx.index(frame_id)``). Random draws come
            from Python's ``random`` (seeded per sample by ``lvseg.train``).
        frames_dir: read frames from ``<frames_dir>/<video>/<frame:05d>.{jpg,png}`` (1-based, e.g. A2D's
            ``Release/pngs320H``) instead of decoding ``Release/clips320H/<video>.mp4``.
        index_cache: JSON file for the sample list ``[[query, video, frame, instance], ...]``; read if it exists,
            else written after building. MTTR's ``a2d_sentences_single_frame_{split}_annotations.json`` has this
            format and can be passed directly.
        transform: callable applied to each sample dict.

    A sample has ``frames`` ``uint8 [T, H, W, 3]``, ``text``, ``video``, ``frame_idx`` (1-based annotated frame),
    ``instance_id``, ``image_id`` (``v_<video>_f_<frame>_i_<instance>``, MTTR's COCO id), ``frame_indices``
    ``int64 [T]`` (0-based), ``center_index`` (position of the annotated frame in the clip), ``orig_size``,
    ``obj_ids`` (``[instance_id]``), ``object_masks`` ``bool [1, T, H, W]``, ``masks`` ``bool [T, H, W]`` (only
    the centre frame is annotated: ``annotated`` is True there alone), ``boxes``, ``valid`` and ``ref_box``
    (``float32 [4]``, the annotation's own ``reBBox`` of the referred instance, xyxy).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        *,
        num_frames: int = 8,
        stride: int = 1,
        sampling: ClipSampling | None = None,
        frames_dir: str | Path | None = None,
        index_cache: str | Path | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "A2D-Sentences root", _HINT)
        self.split = check_split(split, ("train", "test"), "A2DSentences")
        if sampling is not None:
            if not isinstance(sampling, ClipSampling) or sampling.num_frames is None:
                raise InvalidInputError(
                    f"A2DSentences sampling must be a ClipSampling with num_frames set (the clip length), got "
                    f"{sampling!r}; e.g. ClipSampling(num_frames=3, mode='referformer')."
                )
            num_frames = sampling.num_frames
        self.num_frames, self.stride, self.transform = num_frames, stride, transform
        self.sampling = sampling
        centered_window(0, num_frames, 1, stride)  # validates num_frames / stride
        self.video_dir = self.root / "Release" / "clips320H"
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        if self.frames_dir is not None:
            require_dir(self.frames_dir, "A2D frames folder")
        else:
            require_dir(self.video_dir, "A2D videos folder", _HINT)
        self.mask_dir = require_dir(
            self.root / "text_annotations" / "a2d_annotation_with_instances",
            "A2D-Sentences instance masks folder",
            _HINT,
        )
        cache = Path(index_cache) if index_cache is not None else None
        if cache is not None and cache.is_file():
            with open(cache, encoding="utf-8") as fh:
                rows = json.load(fh)
            self.samples = [(str(q), str(v), int(f), int(i)) for q, v, f, i in rows]
            logger.info("A2D-Sentences %s: %d samples from %s", self.split, len(self.samples), cache)
        else:
            self.samples = self._build_index()
            if cache is not None:
                atomic_write_text(cache, json.dumps([list(s) for s in self.samples], ensure_ascii=False))
        self._num_frames_cache: dict[str, int] = {}

    def _split_videos(self) -> list[str]:
        csv_path = require_file(self.root / "Release" / "videoset.csv", "A2D videoset.csv", _HINT)
        missed_path = require_file(
            self.root / "text_annotations" / "a2d_missed_videos.txt", "a2d_missed_videos.txt", _HINT
        )
        missed = {line.strip() for line in missed_path.read_text(encoding="utf-8").splitlines() if line.strip()}
        subset = 0 if self.split == "train" else 1
        videos = []
        with open(csv_path, newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if not row:
                    continue
                if len(row) != 9:
                    raise DatasetError(f"'{csv_path}' line {lineno} has {len(row)} columns, expected 9.")
                if int(row[8]) == subset and row[0] not in missed:
                    videos.append(row[0])
        return videos

    def _build_index(self) -> list[tuple[str, str, int, int]]:
        videos = set(self._split_videos())
        ann_path = require_file(self.root / "text_annotations" / "a2d_annotation.txt", "a2d_annotation.txt", _HINT)
        with open(ann_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"video_id", "instance_id", "query"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"'{ann_path}' lacks the columns {sorted(missing)} in its header.")
            rows = [(r["video_id"], r["instance_id"], r["query"]) for r in reader]
        frame_instances: dict[str, list[tuple[int, list[int]]]] = {}
        samples: list[tuple[str, str, int, int]] = []
        for video, instance, query in tqdm(
            rows, desc=f"A2D-Sentences {self.split} index", unit="sentence", leave=False
        ):
            if video not in videos:
                continue
            if instance.strip() == _BAD_INSTANCE:
                logger.debug("A2D-Sentences: dropping the known bad annotation row of %s", video)
                continue
            try:
                inst = int(instance)
            except ValueError as exc:
                raise DatasetError(
                    f"'{ann_path}': video {video!r} has a non-integer instance id {instance!r}."
                ) from exc
            if video not in frame_instances:
                folder = self.mask_dir / video
                if not folder.is_dir():
                    raise DatasetError(
                        f"video {video!r} has sentences but no mask folder '{folder}'; "
                        "re-extract a2d_annotation_with_instances."
                    )
                if self.frames_dir is None and not (self.video_dir / f"{video}.mp4").is_file():
                    raise DatasetError(
                        f"video {video!r} is in the {self.split} split but "
                        f"'{self.video_dir / (video + '.mp4')}' is missing; "
                        "re-extract Release/clips320H."
                    )
                frame_instances[video] = [
                    (int(p.stem), read_a2d_frame_annotation(p)[0]) for p in sorted(folder.glob("*.h5"))
                ]
            for frame_idx, instances in frame_instances[video]:
                if inst in instances:
                    samples.append((query, video, frame_idx, inst))
        logger.info("A2D-Sentences %s: %d samples from %d videos", self.split, len(samples), len(frame_instances))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def _clip(self, center: int, total: int) -> tuple[list[int], int]:
        """Indices of the clip around ``center`` (0-based) in a video of ``total`` frames, and the position of
        ``center`` in it."""
        if self.sampling is None:
            return centered_window(center, self.num_frames, total, self.stride)
        if not 0 <= center < total:
            raise DatasetError(
                f"annotated frame {center + 1} is beyond the video's {total} frames; the annotations do not "
                "match the video files (use A2D's 320H clips)."
            )
        indices = sample_frame_indices(total, center, self.sampling, random)
        return indices, indices.index(center)

    def _read_clip(self, video: str, center: int) -> tuple[list[int], int, torch.Tensor]:
        if self.frames_dir is not None:
            folder = self.frames_dir / video
            if video not in self._num_frames_cache:
                if not folder.is_dir():
                    raise DatasetError(f"frame folder not found: '{folder}'.")
                count = sum(1 for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
                if count == 0:
                    raise DatasetError(
                        f"the frame folder '{folder}' of video {video!r} holds no .jpg/.png frames; "
                        "re-extract the frames."
                    )
                self._num_frames_cache[video] = count
            total = self._num_frames_cache[video]
            indices, pos = self._clip(center, total)
            paths = []
            for i in indices:
                p = folder / f"{i + 1:05d}.jpg"
                paths.append(p if p.is_file() else folder / f"{i + 1:05d}.png")
            return indices, pos, stack_frames((load_rgb(p) for p in paths), f"video {video!r}")
        path = self.video_dir / f"{video}.mp4"
        # the clip depends on the frame count, so decode once to count when it is not known yet
        cached = self._num_frames_cache.get(video)
        if cached is None:
            total, _ = count_and_read_frames(path)
            self._num_frames_cache[video] = total
        else:
            total = cached
        indices, pos = self._clip(center, total)
        _, got = count_and_read_frames(path, set(indices))
        return indices, pos, stack_frames((got[i] for i in indices), f"video {video!r}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        query, video, frame_idx, instance_id = self.samples[index]
        instances, inst_masks, inst_boxes = read_a2d_frame_annotation(self.mask_dir / video / f"{frame_idx:05d}.h5")
        if instance_id not in instances:
            raise DatasetError(
                f"instance {instance_id} is not in '{self.mask_dir / video / f'{frame_idx:05d}.h5'}'; "
                "the index cache does not match these annotations, delete it."
            )
        k = instances.index(instance_id)
        indices, pos, frames = self._read_clip(video, frame_idx - 1)
        h, w = frames.shape[1:3]
        if inst_masks.shape[1:] != (h, w):
            raise DatasetError(
                f"the mask of {video!r} frame {frame_idx} is {inst_masks.shape[1:]} but the video is "
                f"{(h, w)}; use the 320H clips that the annotations were made on."
            )
        masks = torch.zeros((len(indices), h, w), dtype=torch.bool)
        masks[pos] = torch.from_numpy(inst_masks[k])
        annotated = torch.zeros(len(indices), dtype=torch.bool)
        annotated[pos] = True
        sample: dict[str, Any] = {
            "frames": frames,
            "text": query,
            "video": video,
            "frame_idx": frame_idx,
            "instance_id": instance_id,
            "image_id": f"v_{video}_f_{frame_idx}_i_{instance_id}",
            "frame_indices": torch.tensor(indices, dtype=torch.int64),
            "center_index": pos,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "obj_ids": [instance_id],
            "object_masks": masks[None].clone(),
            "ref_box": torch.from_numpy(inst_boxes[k].copy()),
        }
        sample.update(target_fields(masks, annotated))
        return self.transform(sample) if self.transform is not None else sample

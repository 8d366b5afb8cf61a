"""Helpers shared by the dataset readers: file checks, image/mask reading, boxes, frame sampling.

Every reader returns samples as plain dicts (see ``docs/datasets.md``). The conventions fixed here:

* ``frames``: ``torch.uint8`` ``[T, H, W, 3]`` (RGB).
* ``masks``: ``torch.bool`` ``[T, H, W]`` -- the union of every referred object in each frame.
* ``boxes``: ``torch.float32`` ``[T, 4]`` ``x1, y1, x2, y2`` in pixels where ``x2``/``y2`` are the last foreground
  column/row (ReferFormer's convention); ``0, 0, 0, 0`` in frames where the mask is empty.
* ``valid``: ``torch.bool`` ``[T]`` -- the referred object(s) are visible (non-empty mask) in that frame.
* ``annotated``: ``torch.bool`` ``[T]`` -- the frame has ground truth at all (A2D/JHMDB annotate few frames).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from lvseg.errors import DatasetError, InvalidInputError

logger = logging.getLogger("lvseg.data")

__all__ = ["ClipSampling", "sample_frame_indices"]


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a directory, else raise a :class:`DatasetError` naming it and the fix."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: '{path}' is not a directory. {hint}".strip())
    return path


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file, else raise a :class:`DatasetError` naming it and the fix."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: '{path}' does not exist. {hint}".strip())
    return path


def read_json(path: Path, what: str, hint: str = "") -> Any:
    """Load a JSON file with a clear error when it is missing or corrupt."""
    require_file(path, what, hint)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{what} '{path}' is not valid JSON ({exc}); re-download or re-extract it.") from exc


def check_split(split: str, allowed: Sequence[str], dataset: str, aliases: dict[str, str] | None = None) -> str:
    """Normalise a split name (applying ``aliases``) or raise :class:`InvalidInputError` listing the choices."""
    split = (aliases or {}).get(split, split)
    if split not in allowed:
        raise InvalidInputError(f"{dataset} has no split {split!r}; choose one of {list(allowed)}.")
    return split


def load_rgb(path: Path) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` RGB; a missing file raises :class:`DatasetError` naming the path."""
    if not path.is_file():
        raise DatasetError(
            f"frame not found: '{path}' is listed by the dataset's annotations but missing on disk; "
            "re-extract the dataset archive."
        )
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))  # a writable copy (torch.from_numpy warns on read-only arrays)


def load_index_mask(path: Path) -> np.ndarray:
    """Read a palette ('P') or greyscale PNG as its index array ``uint8 [H, W]`` (pixel value = object id)."""
    if not path.is_file():
        raise DatasetError(
            f"annotation not found: '{path}' is listed by the dataset's annotations but missing on "
            "disk; re-extract the dataset archive."
        )
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16", "1"):
            raise DatasetError(
                f"annotation '{path}' has image mode {img.mode!r}; expected an indexed (palette) PNG "
                "whose pixel values are object ids, as distributed by the dataset's authors."
            )
        return np.asarray(img)


def mask_box(mask: np.ndarray | torch.Tensor) -> list[float]:
    """``[x1, y1, x2, y2]`` of a bool ``[H, W]`` mask (inclusive last pixel); zeros for an empty mask."""
    m = torch.as_tensor(mask)
    rows = torch.nonzero(m.any(dim=1)).flatten()
    if rows.numel() == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = torch.nonzero(m.any(dim=0)).flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])]


def boxes_from_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``float32 [T, 4]`` and visibility ``bool [T]`` of bool masks ``[T, H, W]``."""
    boxes = torch.tensor([mask_box(m) for m in masks], dtype=torch.float32).reshape(-1, 4)
    valid = masks.flatten(1).any(dim=1) if masks.numel() else torch.zeros(masks.shape[0], dtype=torch.bool)
    return boxes, valid


def target_fields(masks: torch.Tensor, annotated: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The ``masks``/``boxes``/``valid``/``annotated`` entries of a sample from bool masks ``[T, H, W]``."""
    boxes, valid = boxes_from_masks(masks)
    if annotated is None:
        annotated = torch.ones(masks.shape[0], dtype=torch.bool)
    return {"masks": masks, "boxes": boxes, "valid": valid & annotated, "annotated": annotated}


def stack_frames(frames: Iterable[np.ndarray], where: str) -> torch.Tensor:
    """Stack ``uint8 [H, W, 3]`` arrays into ``[T, H, W, 3]``; frames of different sizes raise an error."""
    frames = list(frames)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise DatasetError(
            f"frames of {where} have different sizes {sorted(shapes)}; a clip needs one size. "
            "Check that the video's frame folder is not mixed with another video's frames."
        )
    return torch.from_numpy(np.stack(frames)) if frames else torch.zeros((0, 0, 0, 3), dtype=torch.uint8)


SamplingMode = Literal["fixed", "random", "referformer"]


@dataclass(frozen=True)
class ClipSampling:
    """How a training clip is drawn from a video's annotated frames.

    ``num_frames=None`` (the default) gives evaluation sampling: one sample per (video, expression) with every
    frame the protocol evaluates. With ``num_frames=k`` the dataset has one sample per (video, expression,
    anchor) with anchors ``0, k, 2k, ...`` -- the sample count of ReferFormer and MeViS -- and each sample holds
    ``k`` frames chosen by ``mode``:

    * ``"fixed"``: ``anchor, anchor + stride, ...`` (deterministic; clamped to the last frame, which repeats).
    * ``"random"``: a contiguous run with step ``stride`` at a uniformly random start.
    * ``"referformer"``: ReferFormer's sampler -- the anchor, one frame 1-3 before and one 1-3 after it, and the
      rest drawn at random from outside that local window; sorted. ``stride`` is ignored.

    Random modes draw from Python's ``random`` module, which the DataLoader seeds per worker.
    """

    num_frames: int | None = None
    stride: int = 1
    mode: SamplingMode = "fixed"

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.num_frames < 1:
            raise InvalidInputError(f"ClipSampling.num_frames must be >= 1 or None, got {self.num_frames}.")
        if self.stride < 1:
            raise InvalidInputError(f"ClipSampling.stride must be >= 1, got {self.stride}.")
        if self.mode not in ("fixed", "random", "referformer"):
            raise InvalidInputError(f"ClipSampling.mode must be 'fixed', 'random' or 'referformer', got {self.mode!r}.")

    def anchors(self, num_total: int) -> list[int]:
        """Anchor frame indices of the training samples of a video with ``num_total`` frames."""
        if self.num_frames is None:
            return [0]
        return list(range(0, max(num_total, 1), self.num_frames))


class RandomSource(Protocol):
    """What clip sampling draws from: a :class:`random.Random` or the :mod:`random` module itself."""

    def randint(self, a: int, b: int) -> int: ...

    def sample(self, population: Sequence[int], k: int) -> list[int]: ...


def sample_frame_indices(
    num_total: int, anchor: int, sampling: ClipSampling, rng: RandomSource | None = None
) -> list[int]:
    """Indices (into a video's frame list of length ``num_total``) of one clip, sorted ascending.

    ``sampling.num_frames=None`` returns every index. The result always has ``num_frames`` entries; videos
    shorter than the clip repeat frames.
    """
    if num_total < 1:
        raise DatasetError("a video with no frames cannot be sampled; its frame list in the annotations is empty.")
    k = sampling.num_frames
    if k is None:
        return list(range(num_total))
    if rng is None:
        rng = random
    last = num_total - 1
    if sampling.mode == "fixed":
        return [min(anchor + i * sampling.stride, last) for i in range(k)]
    if sampling.mode == "random":
        span = (k - 1) * sampling.stride
        start = rng.randint(0, max(0, last - span))
        return [min(start + i * sampling.stride, last) for i in range(k)]
    # ReferFormer: anchor + local neighbours + global frames from outside the local window.
    idx = [anchor]
    if k == 1:
        return idx
    idx += [max(0, anchor - rng.randint(1, 3)), min(last, anchor + rng.randint(1, 3))]
    if k > 3:
        need = k - len(idx)
        outside = list(range(0, min(idx))) + list(range(max(idx), num_total))
        if len(outside) > need:
            idx += [outside[i] for i in rng.sample(range(len(outside)), need)]
        elif num_total >= need:
            idx += rng.sample(range(num_total), need)
        else:  # video shorter than the clip: every frame, plus repeats
            idx += rng.sample(range(num_total), min(need - num_total, num_total)) + list(range(num_total))
    idx = sorted(idx)
    return idx[:k] if len(idx) >= k else sorted(idx + [idx[-1]] * (k - len(idx)))


def clean_text(text: str) -> str:
    """Lower-case and collapse whitespace, as ReferFormer/MTTR do before tokenising: ``" ".join(t.lower().split())``."""
    return " ".join(text.lower().split())


def centered_window(center: int, num_frames: int, total: int, stride: int = 1) -> tuple[list[int], int]:
    """Indices of a ``num_frames`` clip centred on ``center`` (0-based), clamped to ``[0, total - 1]``.

    The clip is ``center + stride * (i - num_frames // 2)`` for ``i < num_frames`` (MTTR's A2D/JHMDB window:
    ``num_frames // 2`` frames before the annotated one); out-of-range entries repeat the edge frames. Returns the
    indices and the position of the centre frame in the clip (``num_frames // 2``).
    """
    if num_frames < 1 or stride < 1:
        raise InvalidInputError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}.")
    half = num_frames // 2
    return [min(max(center + stride * (i - half), 0), total - 1) for i in range(num_frames)], half


class RedrawInvisible(torch.utils.data.Dataset):
    """ReferFormer's training rule: a clip in which the referred object is visible in no frame (``valid`` all
    False, after the dataset's transforms, e.g. a crop that cut it out) is replaced by another sample drawn
    uniformly at random with Python's ``random`` (seeded per sample by ``lvseg.train``), until one shows it.

    Samples need ground truth (a ``valid`` [T] entry). ``max_draws`` bounds the search so that a dataset whose
    objects are never visible fails with a clear error instead of looping forever.
    """

    def __init__(self, dataset: Any, max_draws: int = 100) -> None:
        if len(dataset) == 0:
            raise DatasetError("RedrawInvisible got an empty dataset; check the dataset's root and split.")
        self.dataset = dataset
        self.max_draws = max_draws

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for _ in range(self.max_draws):
            sample = self.dataset[index]
            if "valid" not in sample:
                raise DatasetError("RedrawInvisible needs samples with ground truth ('valid'): use a training split.")
            if bool(torch.as_tensor(sample["valid"]).any()):
                return sample
            index = random.randrange(len(self.dataset))
        raise DatasetError(
            f"no sample with a visible referred object in {self.max_draws} draws: the masks are "
            "empty in (almost) every clip; check the annotations and the crop transforms."
        )

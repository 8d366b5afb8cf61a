"""Ref-YouTube-VOS and MeViS: per-expression J&F and the server submission layout.

Scoring follows MeViS ``tools/eval_mevis.py`` (henghuiding/MeViS; the same in ReferDINO ``eval/eval_mevis.py``):

* ground truth of an expression in a frame = the union (uint8 sum) of the COCO-RLE masks of all its ``anno_id``\\ s
  (``null`` = absent);
* prediction = ``<pred>/<video>/<exp_id>/<frame>.png`` read as greyscale, nonzero = foreground, at the original
  size (the canvas is taken from the expression's first prediction);
* ``j = mean over frames of db_eval_iou``, ``f = mean over frames of db_eval_boundary`` (DAVIS definitions, no void,
  no frame skipped); a missing video folder scores ``[0, 0]``;
* J = mean over expressions, F = mean over expressions, J&F = (J + F) / 2, printed as ``round(100 * x, 2)``.

Ref-YouTube-VOS is scored only by its server; the same computation is what a local check on a split with ground
truth can do. :class:`SubmissionWriter` writes the ``Annotations/<video>/<exp_id>/<frame>.png`` layout (single channel,
0/255, original size, as MTTR/ReferFormer write it) and zips it.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DatasetError, InvalidInputError
from ..utils import atomic_folder, atomic_path
from .base import Evaluator, to_numpy_masks
from .davis import region_and_boundary

__all__ = [
    "ExpressionJF",
    "SubmissionWriter",
    "write_expression_pngs",
    "make_submission_zip",
    "read_binary_png",
    "evaluate_mevis_folder",
]

logger = logging.getLogger(__name__)


def read_binary_png(path: str | Path) -> np.ndarray:
    """A predicted mask PNG as bool [H, W] (nonzero = foreground).

    Palette images are read as their indices (the official ``cv2.imread(..., GRAYSCALE)`` reads the palette colour's
    luminance instead; both are nonzero exactly where the index is, for any palette whose non-background colours are
    not black, such as the DAVIS one).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"prediction '{path}' is missing: predict every frame listed in meta_expressions.json")
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im.convert("L"))
        else:
            arr = np.asarray(im)
    if arr.ndim == 3:
        return np.asarray(arr.any(-1))
    return arr != 0


class ExpressionJF(Evaluator):
    """Per-expression J and F averaged over expressions (MeViS ``eval_mevis.py``; Ref-YouTube-VOS with GT).

    Use :meth:`add` with arrays, :meth:`add_missing` for an expression with no prediction, or
    :func:`evaluate_mevis_folder` for a prediction folder. :meth:`summary` gives ``{"J&F", "J", "F"}`` in percent.
    """

    source = "MeViS tools/eval_mevis.py with DAVIS metrics (davis2017-evaluation @ac7c43f)"

    def __init__(self, benchmark: str = "MeViS", bound_th: float = 0.008) -> None:
        self.benchmark = benchmark  # type: ignore[misc]
        self.bound_th = bound_th
        self.per_expression: dict[str, tuple[float, float]] = {}

    def add(self, video: str, exp_id: str, pred: Any, gt: Any) -> tuple[float, float]:
        """Score one expression.

        Args:
            pred: predicted masks bool [T, H, W] (all frames listed for the video, original resolution).
            gt: ground truth [T, H, W] (union of the referred objects; nonzero = foreground).

        Returns:
            ``(j, f)`` means over frames (fractions).
        """
        p = to_numpy_masks(pred, "pred", 3)
        g = to_numpy_masks(gt, "gt", 3)
        if p.shape != g.shape:
            raise InvalidInputError(
                f"{video}/{exp_id}: prediction {p.shape} and ground truth {g.shape} differ; predict every listed "
                "frame at the original resolution"
            )
        j_frames, f_frames = region_and_boundary(p, g, self.bound_th)
        j, f = float(np.mean(j_frames)), float(np.mean(f_frames))
        self.per_expression[self._key(video, exp_id)] = (j, f)
        return j, f

    def add_missing(self, video: str, exp_id: str) -> None:
        """An expression without any prediction scores J = F = 0 (as a missing video folder does officially)."""
        self.per_expression[self._key(video, exp_id)] = (0.0, 0.0)

    @staticmethod
    def _key(video: str, exp_id: Any) -> str:
        return f"{video}_{exp_id}"

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """``sample`` needs ``video``, ``exp_id`` and ``masks`` (GT union, [T, H, W])."""
        for key in ("video", "exp_id", "masks"):
            if key not in sample:
                raise InvalidInputError(
                    f"{self.benchmark} evaluation needs sample[{key!r}]; the dataset gave {sorted(sample)}"
                )
        self.add(str(sample["video"]), str(sample["exp_id"]), masks, sample["masks"])

    def summary(self) -> dict[str, float]:
        if not self.per_expression:
            raise InvalidInputError(f"no expression was evaluated for {self.benchmark}")
        j = np.mean([v[0] for v in self.per_expression.values()])
        f = np.mean([v[1] for v in self.per_expression.values()])
        return {"J&F": 100 * float((j + f) / 2), "J": 100 * float(j), "F": 100 * float(f)}


def write_expression_pngs(root: str | Path, video: str, exp_id: str, masks: Any, frame_names: Sequence[str]) -> Path:
    """Write ``<root>/<video>/<exp_id>/<frame>.png`` (uint8 0/255, single channel) for masks bool [T, H, W].

    The expression folder is written beside its final place and renamed into it, so an interrupted run never leaves
    a half-written expression behind.
    """
    m = to_numpy_masks(masks, "masks", 3)
    if len(frame_names) != m.shape[0]:
        raise InvalidInputError(f"{video}/{exp_id}: {m.shape[0]} masks but {len(frame_names)} frame names")
    final = Path(root) / str(video) / str(exp_id)
    # a fresh temporary folder per call (never one left by a killed run), swapped in whole (see atomic_folder)
    with atomic_folder(final, overwrite=True) as tmp:
        for name, mask in zip(frame_names, m):
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp / f"{name}.png")
    return final


def make_submission_zip(pred_root: str | Path, zip_path: str | Path, top_folder: str | None = "Annotations") -> Path:
    """Zip a ``<video>/<exp_id>/<frame>.png`` tree for the benchmark server.

    Ref-YouTube-VOS (CodaLab) expects the tree under a top-level ``Annotations/`` folder (``top_folder`` default);
    MeViS (``sample_submission_valid.zip``) expects the video folders at the top: pass ``top_folder=None``.
    """
    pred_root = Path(pred_root)
    if not pred_root.is_dir():
        raise InvalidInputError(f"prediction folder '{pred_root}' does not exist")
    files = sorted(p for p in pred_root.rglob("*.png") if not any(part.startswith(".") for part in p.parts))
    if not files:
        raise InvalidInputError(f"no PNG predictions under '{pred_root}'; nothing to submit")
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                rel = f.relative_to(pred_root).as_posix()
                zf.write(f, f"{top_folder}/{rel}" if top_folder else rel)
    return Path(zip_path)


class SubmissionWriter(Evaluator):
    """For splits scored only by a server (Ref-YouTube-VOS valid, MeViS valid): write PNGs, then a zip."""

    source = "server submission layout <video>/<exp_id>/<frame>.png (MTTR / ReferFormer / MeViS)"

    def __init__(
        self, output_dir: str | Path, benchmark: str = "Ref-YouTube-VOS", top_folder: str | None = "Annotations"
    ) -> None:
        self.benchmark = benchmark  # type: ignore[misc]
        self.output_dir = Path(output_dir)
        self.top_folder = top_folder
        self.pred_root = self.output_dir / (top_folder or "submission")
        self.count = 0

    def add(self, video: str, exp_id: str, masks: Any, frame_names: Sequence[str]) -> None:
        write_expression_pngs(self.pred_root, video, exp_id, masks, frame_names)
        self.count += 1

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """``sample`` needs ``video``, ``exp_id`` and ``frame_names`` (or ``frames_ids``)."""
        names = sample.get("frame_names", sample.get("frame_ids"))
        if names is None or "video" not in sample or "exp_id" not in sample:
            raise InvalidInputError("a submission needs sample['video'], sample['exp_id'] and sample['frame_names']")
        self.add(str(sample["video"]), str(sample["exp_id"]), masks, [str(n) for n in names])

    def finalize(self) -> Path:
        """Zip the predictions; returns the zip's path (``<output_dir>/submission.zip``)."""
        return make_submission_zip(self.pred_root, self.output_dir / "submission.zip", self.top_folder)

    def summary(self) -> dict[str, float]:
        return {}

    def format_table(self) -> str:
        return (
            f"{self.benchmark}: {self.count} expression(s) written under {self.pred_root}; "
            "zip them with make_submission_zip and upload to the benchmark server"
        )


def _decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    obj = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(obj)


def evaluate_mevis_folder(
    pred_dir: str | Path,
    meta_expressions: str | Path | Mapping[str, Any],
    mask_dict: str | Path | Mapping[str, Any],
    benchmark: str = "MeViS",
    videos: Iterable[str] | None = None,
) -> ExpressionJF:
    """Score a ``<video>/<exp_id>/<frame>.png`` prediction folder as ``eval_mevis.py`` does.

    Args:
        pred_dir: the prediction folder (the unzipped submission, without the ``Annotations/`` level).
        meta_expressions: ``meta_expressions.json`` (path or loaded dict) of the split.
        mask_dict: ``mask_dict.json`` (path or loaded dict): COCO RLE per frame per ``anno_id``.
        videos: restrict to these videos (default: all of the split).

    Returns:
        the :class:`ExpressionJF` holding per-expression ``(j, f)``; call ``.summary()`` for J&F.
    """

    def load(x: Any, what: str) -> Any:
        if isinstance(x, (str, Path)):
            path = Path(x)
            if not path.is_file():
                raise DatasetError(f"{what} not found at '{path}'")
            return json.loads(path.read_text(encoding="utf-8"))
        return x

    meta = load(meta_expressions, "meta_expressions.json")
    meta = meta.get("videos", meta)
    masks = load(mask_dict, "mask_dict.json")
    pred_dir = Path(pred_dir)
    evaluator = ExpressionJF(benchmark)
    wanted = set(videos) if videos is not None else None
    for video, info in meta.items():
        if wanted is not None and video not in wanted:
            continue
        frames = [str(f) for f in info["frames"]]
        for exp_id, exp in info["expressions"].items():
            folder = pred_dir / video / str(exp_id)
            if not folder.is_dir():
                logger.warning("%s/%s has no prediction folder: scored J = F = 0", video, exp_id)
                evaluator.add_missing(video, exp_id)
                continue
            pred = np.stack([read_binary_png(folder / f"{name}.png") for name in frames])
            gt = np.zeros(pred.shape, dtype=np.uint8)
            for anno_id in exp["anno_id"]:
                per_frame = masks.get(str(anno_id))
                if per_frame is None:
                    raise DatasetError(f"anno_id {anno_id} of {video}/{exp_id} is not in mask_dict.json")
                for t, rle in enumerate(per_frame[: len(frames)]):
                    if rle:
                        m = _decode_rle(rle)
                        if m.shape != gt.shape[1:]:
                            raise InvalidInputError(
                                f"{video}/{exp_id}: predictions are {gt.shape[1:]} but the ground truth is "
                                f"{m.shape}; predict at the original resolution"
                            )
                        gt[t] += m
            evaluator.add(video, str(exp_id), pred, gt)
    return evaluator

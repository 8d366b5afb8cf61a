"""Frame-level referring-segmentation evaluators: A2D/JHMDB-Sentences (MTTR), A2D-S+ (Locater), RefCOCO (LAVT).

=================== ========================================================= ===============================
evaluator           what it reproduces                                        numbers
=================== ========================================================= ===============================
``MTTREvaluator``   MTTR ``trainer.py`` + ``metrics.py`` (ReferFormer          COCO mAP (all predictions per
                    ``a2d_eval.py`` is a copy): one COCO image per (video,     image), P@K (``>``), overall and
                    frame, instance), ``useCats = 0``                          mean IoU of the top-scoring one
``LocaterEvaluator`` Locater ``tools/evaluate.py``: every annotated frame of    P@K (``>=``), overall / mean IoU
                    every (video, object), float32 running sums               (empty union -> 1), "mAP" = mean
                                                                              of the five P@K
``LAVTEvaluator``   LAVT ``test.py``: each sentence one sample, ground truth   P@K (``>=``), overall / mean IoU
                    resized to 480x480 (PIL nearest), empty union -> 0         (empty union -> 0)
=================== ========================================================= ===============================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from .base import Evaluator, to_numpy_masks
from .coco import COCO_MAP_KEYS, coco_mask_map, encode_rle
from .iou import LAVT, LOCATER, MTTR, intersection_union, iou_summary

__all__ = ["MTTREvaluator", "LocaterEvaluator", "LAVTEvaluator", "a2d_image_id"]

logger = logging.getLogger(__name__)


def a2d_image_id(video: str, frame: Any, instance: Any | None = None) -> str:
    """MTTR's COCO image id: ``v_<video>_f_<frame>_i_<instance>`` (A2D) or ``v_<video>_f_<frame>`` (JHMDB).

    ``frame`` is the official annotation's frame number (A2D: the ``.h5`` file stem, JHMDB: the ``.png`` stem,
    both 1-based); a numeric name such as ``"00011"`` is written as ``11``, as MTTR's ``int(...)`` does. The ids
    matter beyond naming: pycocotools orders images by id, which decides ties between equal scores.
    """
    if isinstance(frame, str) and frame.isdigit():
        frame = int(frame)
    base = f"v_{video}_f_{frame}"
    return base if instance is None else f"{base}_i_{instance}"


def _annotated_frames(sample: Mapping[str, Any], n_frames: int) -> list[int]:
    annotated = sample.get("annotated")
    if annotated is None:
        return list(range(n_frames))
    flags = np.asarray(annotated.cpu() if hasattr(annotated, "cpu") else annotated).astype(bool).reshape(-1)
    if flags.size != n_frames:
        raise InvalidInputError(f"sample['annotated'] has {flags.size} entries for {n_frames} frames")
    return [int(t) for t in np.flatnonzero(flags)]


def _frame_names(sample: Mapping[str, Any], n_frames: int) -> list[str]:
    names = sample.get("frame_names", sample.get("frame_ids"))
    if names is None:
        return [str(t) for t in range(n_frames)]
    return [str(n) for n in names]


class MTTREvaluator(Evaluator):
    """A2D-Sentences / JHMDB-Sentences as MTTR computes them.

    Per GT image (one referred instance in one frame) add every prediction the model makes for it (MTTR: all 50
    queries with their softmax "referred" probability). mAP uses all of them; P@K and the IoUs use the single
    highest-scoring one (``sorted(preds, key=score)[-1]``: the last of equal scores), with
    ``iou = (I + 1e-6) / (U + 1e-6)`` in float32 and ``iou > K``.
    """

    source = "MTTR trainer.py/metrics.py (COCOeval segm useCats=0; P@K with '>')"

    def __init__(self, benchmark: str = "A2D-Sentences") -> None:
        self.benchmark = benchmark  # type: ignore[misc]
        self.ground_truth: list[dict[str, Any]] = []  # COCO RLE per GT image
        self.predictions: list[dict[str, Any]] = []  # COCO RLE per prediction
        self.top1: dict[Any, tuple[int, int]] = {}  # image id -> (I, U) of its highest-scoring prediction

    def add(self, image_id: Any, gt_mask: Any, pred_masks: Any, scores: Any) -> None:
        """Args:
        image_id: see :func:`a2d_image_id`.
        gt_mask: the referred instance's mask [H, W].
        pred_masks: [Q, H, W] (or one [H, W]) predictions at the original resolution.
        scores: [Q] (or one float) confidences.
        """
        gt = to_numpy_masks(gt_mask, "gt_mask", 2)
        preds = to_numpy_masks(pred_masks, "pred_masks", (2, 3))
        if preds.ndim == 2:
            preds = preds[None]
        score = np.asarray(
            scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores, dtype=np.float64
        ).reshape(-1)
        if score.size != preds.shape[0]:
            raise InvalidInputError(f"{image_id}: {preds.shape[0]} predicted masks but {score.size} scores")
        if preds.shape[1:] != gt.shape:
            raise InvalidInputError(
                f"{image_id}: predictions {preds.shape[1:]} vs ground truth {gt.shape}; "
                "predict at the original resolution"
            )
        if image_id in self.top1:
            raise InvalidInputError(f"image_id {image_id!r} was added twice; give all its predictions in one call")
        if preds.shape[0] == 0:
            raise InvalidInputError(f"{image_id}: no prediction; MTTR scores every GT image")
        self.ground_truth.append({"image_id": image_id, "segmentation": encode_rle(gt)})
        for m, s in zip(preds, score):
            self.predictions.append({"image_id": image_id, "segmentation": encode_rle(m), "score": float(s)})
        # sorted(preds, key=score)[-1]: the highest score, the last one among equal scores
        best = max(range(len(score)), key=lambda q: (score[q], q))
        i, u = intersection_union(preds[best], gt)
        self.top1[image_id] = (int(i), int(u))

    def _sample_arrays(
        self, sample: Mapping[str, Any], masks: Any, scores: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(GT masks [T, H, W], predicted masks [N, H, W], scores float64 [N]) of one sample, checked."""
        if "video" not in sample or "masks" not in sample:
            raise InvalidInputError(f"{self.benchmark} evaluation needs sample['video'] and sample['masks']")
        gt = to_numpy_masks(sample["masks"], "sample['masks']", 3)
        pred = to_numpy_masks(masks, "masks", 3)
        score = np.asarray(
            scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores, dtype=np.float64
        ).reshape(-1)
        return gt, pred, score

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """Every annotated frame of ``sample`` (``annotated`` bool [T]; default all) is one GT image.

        ``sample`` needs ``video`` and ``masks`` ([T, H, W]). A sample with one annotated frame and an ``image_id``
        (as :class:`lvseg.data.A2DSentences` / ``JHMDBSentences`` give) uses that id; otherwise ``frame_ids``
        (official frame names) and ``instance_id`` (A2D) build it, see :func:`a2d_image_id`.
        """
        gt, pred, score = self._sample_arrays(sample, masks, scores)
        frames = _annotated_frames(sample, gt.shape[0])
        given = sample.get("image_id")
        if isinstance(given, str) and len(frames) == 1:  # lvseg.data's A2D/JHMDB samples: one annotated frame
            self.add(given, gt[frames[0]], pred[frames[0]], score[frames[0]])
            return
        names = _frame_names(sample, gt.shape[0])
        instance = sample.get("instance_id")
        for t in frames:
            image_id = a2d_image_id(str(sample["video"]), names[t], instance)
            self.add(image_id, gt[t], pred[t], score[t])

    def add_sample_queries(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """Every candidate of each annotated frame of ``sample``: ``masks`` [F * Q, H, W], ``scores`` [F * Q].

        This is MTTR's protocol proper (all queries for mAP, the top-scoring one for P@K and IoU), what
        :func:`lvseg.evaluate` passes from :meth:`~lvseg.models.base.RVOSModel.segment_annotated_frame`: the ``Q``
        candidates of the first annotated frame (``annotated`` bool [T]; default all frames), then those of the
        next, ``F`` frames in all (A2D/JHMDB samples have one). GT image ids as in :meth:`add_sample`.
        """
        gt, preds, score = self._sample_arrays(sample, masks, scores)
        frames = _annotated_frames(sample, gt.shape[0])
        if not frames:
            return
        if preds.shape[0] % len(frames) or score.size != preds.shape[0]:
            raise InvalidInputError(
                f"{preds.shape[0]} candidate masks and {score.size} scores do not split into "
                f"the sample's {len(frames)} annotated frames"
            )
        q = preds.shape[0] // len(frames)
        given = sample.get("image_id")
        names = _frame_names(sample, gt.shape[0])
        for k, t in enumerate(frames):
            if isinstance(given, str) and len(frames) == 1:
                image_id = given
            else:
                image_id = a2d_image_id(str(sample["video"]), names[t], sample.get("instance_id"))
            self.add(image_id, gt[t], preds[k * q : (k + 1) * q], score[k * q : (k + 1) * q])

    def summary(self) -> dict[str, float]:
        if not self.ground_truth:
            raise InvalidInputError(f"no {self.benchmark} sample was evaluated")
        ap = coco_mask_map(self.ground_truth, self.predictions)
        inter = [iu[0] for iu in self.top1.values()]  # GT order, as coco_gt.imgs
        union = [iu[1] for iu in self.top1.values()]
        ious = iou_summary(inter, union, MTTR)
        out = {key: 100 * ap[key] for key in COCO_MAP_KEYS}
        out.update({k: 100 * v for k, v in ious.items() if k.startswith("P@")})
        out["overall_iou"] = 100 * ious["overall_iou"]
        out["mean_iou"] = 100 * ious["mean_iou"]
        return out


class LocaterEvaluator(Evaluator):
    """A2D-S+ (and Locater's A2D-S / JHMDB-S formats) as Locater's ``tools/evaluate.py``.

    Every annotated frame of every (video, object) sample is one unit, added in evaluation order (the running
    float32 sums depend on it). ``summary`` adds Locater's "mAP" (the mean of the five precisions; not COCO AP).
    """

    source = "Locater tools/evaluate.py (P@K with '>=', empty union -> IoU 1, float32 sums)"
    digits = 3

    def __init__(self, benchmark: str = "A2D-S+") -> None:
        self.benchmark = benchmark  # type: ignore[misc]
        self.intersections: list[int] = []
        self.unions: list[int] = []

    def add(self, pred: Any, gt: Any) -> None:
        """Predicted and GT masks [H, W] or [N, H, W] (N annotated frames in order), GT at original size."""
        i, u = intersection_union(pred, gt)
        self.intersections.extend(int(v) for v in np.atleast_1d(i))
        self.unions.extend(int(v) for v in np.atleast_1d(u))

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """The annotated frames (``annotated`` bool [T]; default all) of ``sample['masks']``."""
        if "masks" not in sample:
            raise InvalidInputError(f"{self.benchmark} evaluation needs sample['masks']")
        gt = to_numpy_masks(sample["masks"], "sample['masks']", 3)
        pred = to_numpy_masks(masks, "masks", 3)
        frames = _annotated_frames(sample, gt.shape[0])
        if frames:
            self.add(pred[frames], gt[frames])

    def summary(self) -> dict[str, float]:
        return iou_summary(self.intersections, self.unions, LOCATER, scale=100.0)


class LAVTEvaluator(Evaluator):
    """RefCOCO / RefCOCO+ / RefCOCOg as LAVT's ``test.py``: at 480x480, empty union -> IoU 0, ``iou >= K``.

    Args:
        size: the evaluation resolution (LAVT's ``img_size``, 480). Ground truth is resized to it with PIL
            nearest; so is a prediction that is not already at that size (exact when the model's own output is
            ``size x size``, as LAVT's is).
    """

    benchmark = "RefCOCO"
    source = "LAVT test.py (480x480 nearest-resized GT, P@K with '>=', empty union -> IoU 0)"

    def __init__(self, benchmark: str = "RefCOCO", size: int | None = 480) -> None:
        self.benchmark = benchmark  # type: ignore[misc]
        self.size = size
        self.intersections: list[int] = []
        self.unions: list[int] = []

    def _resize(self, mask: np.ndarray) -> np.ndarray:
        if self.size is None or mask.shape == (self.size, self.size):
            return mask
        image = Image.fromarray(mask.astype(np.uint8), mode="L")
        return np.asarray(image.resize((self.size, self.size), Image.Resampling.NEAREST)) != 0

    def add(self, pred: Any, gt: Any) -> None:
        """One sentence: predicted mask [H', W'] and ground truth [H, W] at the original resolution."""
        p = self._resize(to_numpy_masks(pred, "pred", 2))
        g = self._resize(to_numpy_masks(gt, "gt", 2))
        i, u = intersection_union(p, g)
        self.intersections.append(int(i))
        self.unions.append(int(u))

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """An image sample: ``masks`` [1, H, W] (or every frame, each one sentence sample)."""
        if "masks" not in sample:
            raise InvalidInputError(f"{self.benchmark} evaluation needs sample['masks']")
        gt = to_numpy_masks(sample["masks"], "sample['masks']", (2, 3))
        pred = to_numpy_masks(masks, "masks", (2, 3))
        gt = gt[None] if gt.ndim == 2 else gt
        pred = pred[None] if pred.ndim == 2 else pred
        for p, g in zip(pred, gt):
            self.add(p, g)

    def summary(self) -> dict[str, float]:
        return iou_summary(self.intersections, self.unions, LAVT, scale=100.0)

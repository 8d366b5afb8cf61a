"""COCO mask mAP with categories ignored, as MTTR / ReferFormer / VLP-RVOS compute it on A2D- and JHMDB-Sentences.

One COCO *image* per (video, frame, referred instance), holding exactly one ground-truth annotation of a single
dummy category; every prediction for that image (MTTR: all 50 queries) is a detection with its score. Scoring is
``pycocotools`` ``COCOeval(iouType="segm")`` with ``params.useCats = 0`` and the default parameters (IoU
thresholds 0.50:0.05:0.95, 101 recall points, maxDets 1/10/100, area ranges small < 32², medium < 96², large).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["encode_rle", "coco_mask_map", "COCO_MAP_KEYS"]

logger = logging.getLogger(__name__)

# pycocotools' stats[0..5], with MTTR's labels
COCO_MAP_KEYS: tuple[str, ...] = (
    "mAP 0.5:0.95",
    "AP 0.5",
    "AP 0.75",
    "AP 0.5:0.95 S",
    "AP 0.5:0.95 M",
    "AP 0.5:0.95 L",
)


def encode_rle(mask: Any) -> dict[str, Any]:
    """COCO RLE of one binary mask [H, W] (numpy or torch), ``counts`` as an ASCII string (JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InvalidInputError(f"encode_rle needs one [H, W] mask, got shape {arr.shape}")
    rle = mask_utils.encode(np.asfortranarray(arr != 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _as_rle(entry: Mapping[str, Any], what: str) -> dict[str, Any]:
    if "segmentation" in entry:
        seg = entry["segmentation"]
        if not (isinstance(seg, Mapping) and "counts" in seg and "size" in seg):
            raise InvalidInputError(f"{what}: 'segmentation' must be a COCO RLE dict with 'size' and 'counts'")
        counts = seg["counts"]
        return {
            "size": [int(s) for s in seg["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        }
    if "mask" in entry:
        return encode_rle(entry["mask"])
    raise InvalidInputError(f"{what} needs a 'mask' ([H, W] array) or a 'segmentation' (COCO RLE)")


def coco_mask_map(
    ground_truth: Iterable[Mapping[str, Any]], predictions: Iterable[Mapping[str, Any]]
) -> dict[str, float]:
    """COCO segm AP of referred-object masks, categories ignored.

    Args:
        ground_truth: one entry per image: ``{"image_id": str | int, "mask": [H, W]}`` or with ``"segmentation"``
            (COCO RLE) instead of ``"mask"``; optional ``"bbox"`` ([x, y, w, h], kept as MTTR stores it for A2D).
        predictions: any number per image: ``{"image_id", "mask" | "segmentation", "score": float}``.

    Returns:
        ``{"mAP 0.5:0.95", "AP 0.5", "AP 0.75", "AP 0.5:0.95 S", "AP 0.5:0.95 M", "AP 0.5:0.95 L"}``: pycocotools'
        ``stats[:6]`` as fractions (-1 where an area range has no ground truth, as pycocotools reports it).
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    sizes: dict[Any, tuple[int, int]] = {}
    for n, entry in enumerate(ground_truth):
        image_id = entry["image_id"]
        if image_id in sizes:
            raise InvalidInputError(
                f"ground-truth image_id {image_id!r} appears twice; each (video, frame, instance) needs its own id"
            )
        rle = _as_rle(entry, f"ground truth {image_id!r}")
        height, width = rle["size"]
        sizes[image_id] = (height, width)
        images.append({"id": image_id, "height": height, "width": width})
        ann = {
            "id": n + 1,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": rle,
            "area": float(mask_utils.area(rle)),
            "iscrowd": 0,
        }
        if "bbox" in entry:
            ann["bbox"] = [float(v) for v in entry["bbox"]]
        annotations.append(ann)
    if not images:
        raise InvalidInputError("coco_mask_map needs at least one ground-truth mask")
    detections = []
    for entry in predictions:
        image_id = entry["image_id"]
        if image_id not in sizes:
            raise InvalidInputError(f"prediction for image_id {image_id!r}, which has no ground truth")
        rle = _as_rle(entry, f"prediction for {image_id!r}")
        if tuple(rle["size"]) != sizes[image_id]:
            raise InvalidInputError(
                f"prediction for {image_id!r} is {tuple(rle['size'])}, the ground truth is {sizes[image_id]}: "
                "predict at the original resolution"
            )
        detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(entry["score"])})
    if not detections:
        raise InvalidInputError("coco_mask_map got no predictions; COCO AP is undefined without detections")

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # pycocotools prints its progress and the summary table
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "dummy_class"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.useCats = 0
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug("pycocotools output:\n%s", captured.getvalue())
    return {key: float(value) for key, value in zip(COCO_MAP_KEYS, evaluator.stats[:6])}

"""A direct pycocotools mask-mAP run, the independent reference that tests compare lvseg's COCO mAP with."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def pycocotools_map(gts: list[dict], preds: list[dict]) -> list[float]:
    """A direct pycocotools run, the way MTTR builds its GT json (string image ids, one dummy category)."""
    images, anns = [], []
    for n, g in enumerate(gts):
        rle = mask_utils.encode(np.asfortranarray(g["mask"].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        images.append({"id": g["image_id"], "height": g["mask"].shape[0], "width": g["mask"].shape[1]})
        anns.append({"id": n + 1, "image_id": g["image_id"], "category_id": 1, "segmentation": rle,
                     "area": float(mask_utils.area(rle)), "iscrowd": 0})
    dets = []
    for p in preds:
        rle = mask_utils.encode(np.asfortranarray(p["mask"].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        dets.append({"image_id": p["image_id"], "category_id": 1, "segmentation": rle, "score": p["score"]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "dummy_class"}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="segm")
        ev.params.useCats = 0
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]

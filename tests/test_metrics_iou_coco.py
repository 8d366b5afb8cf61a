"""IoU / precision@K under each protocol, and COCO mask mAP against hand-computed values and pycocotools."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from coco_reference import pycocotools_map
from lvseg.errors import InvalidInputError
from lvseg.metrics import (
    LAVT,
    LOCATER,
    MTTR,
    coco_mask_map,
    encode_rle,
    intersection_union,
    iou_summary,
    mask_iou,
    mean_iou,
    overall_iou,
    precision_at_k,
)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _random_pairs(seed: int, n: int = 60, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.random((n, size, size)) < rng.uniform(0.0, 0.6, size=(n, 1, 1))
    pred = gt ^ (rng.random((n, size, size)) < rng.uniform(0.0, 0.5, size=(n, 1, 1)))
    gt[:3] = False  # empty ground truth ...
    pred[:2] = False  # ... two of them with an empty prediction (union 0)
    return pred, gt


def _mttr_loop(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """MTTR's calculate_precision_at_k_and_iou_metrics, one sample at a time (float32 torch IoU, Python sums)."""
    counters = {k: 0 for k in THRESHOLDS}
    total_i = total_u = 0.0
    ious = []
    for p, g in zip(pred, gt):
        p_t, g_t = torch.tensor(p.astype(np.uint8)).int(), torch.tensor(g.astype(np.uint8)).int()
        inter = (p_t & g_t).float().sum()
        union = (p_t | g_t).float().sum()
        iou = ((inter + 1e-6) / (union + 1e-6)).item()
        for k in THRESHOLDS:
            counters[k] += iou > k
        total_i += inter.item()
        total_u += union.item()
        ious.append(iou)
    out = {f"P@{k}": c / len(ious) for k, c in counters.items()}
    out.update(overall_iou=total_i / total_u, mean_iou=float(np.mean(ious)))
    return out


def _locater_loop(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Locater's tools/evaluate.py accumulation in float32 tensors."""
    cum_i = cum_u = mean = 0
    correct = torch.zeros(len(THRESHOLDS))
    total = torch.tensor([0.0])
    for p, g in zip(pred, gt):
        p_t, g_t = torch.tensor(p).float(), torch.tensor(g).float()
        temp = p_t * g_t
        inter, union = temp.sum(), ((p_t + g_t) - temp).sum()
        cum_i = cum_i + inter
        cum_u = cum_u + union
        iou = 1.0 if union == 0 else inter / union
        mean = mean + iou
        total += 1
        for idx, k in enumerate(THRESHOLDS):
            correct[idx] += iou >= k
    out = {f"P@{k}": float(correct[i] / total) for i, k in enumerate(THRESHOLDS)}
    out.update(overall_iou=float(cum_i / cum_u), mean_iou=float(mean / total),
               mAP=float(torch.mean(correct)) / float(total))
    return out


def _lavt_loop(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    cum_i = cum_u = 0
    correct = np.zeros(len(THRESHOLDS), np.int32)
    ious = []
    for p, g in zip(pred, gt):
        inter, union = np.sum(np.logical_and(p, g)), np.sum(np.logical_or(p, g))
        iou = inter * 1.0 / union if union != 0 else 0.0
        ious.append(iou)
        cum_i += inter
        cum_u += union
        for idx, k in enumerate(THRESHOLDS):
            correct[idx] += iou >= k
    out = {f"P@{k}": correct[i] * 100.0 / len(ious) for i, k in enumerate(THRESHOLDS)}
    out.update(overall_iou=cum_i * 100.0 / cum_u, mean_iou=np.mean(ious) * 100.0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_summary_reproduces_each_official_loop(seed: int) -> None:
    pred, gt = _random_pairs(seed)
    inter, union = intersection_union(pred, gt)
    assert inter.shape == (len(pred),) and inter.dtype == np.int64
    assert iou_summary(inter, union, MTTR) == _mttr_loop(pred, gt)
    assert iou_summary(inter, union, "locater") == _locater_loop(pred, gt)
    assert iou_summary(inter, union, LAVT, scale=100.0) == _lavt_loop(pred, gt)


def test_empty_masks_and_threshold_comparisons() -> None:
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty, MTTR) == 1.0
    assert mask_iou(empty, empty, LAVT) == 0.0
    assert mask_iou(empty, empty, LOCATER) == 1.0
    # I/U = 1/2 exactly: MTTR's epsilon lifts it above 0.5, so '>' still counts it; LAVT counts it by '>='
    pred = np.zeros((1, 2), bool)
    pred[0, 0] = True
    gt = np.ones((1, 2), bool)
    i, u = intersection_union(pred, gt)
    assert (int(i), int(u)) == (1, 2)
    assert iou_summary([1], [2], MTTR)["P@0.5"] == 1.0
    assert iou_summary([1], [2], LAVT)["P@0.5"] == 1.0
    assert iou_summary([3], [5], MTTR)["P@0.6"] == 1.0  # (3 + 1e-6) / (5 + 1e-6) > 0.6 in float32
    # 7/10 in float32 is just below 0.7 in float64 but equal to float32(0.7): Locater compares in float32
    assert iou_summary([7], [10], LOCATER)["P@0.7"] == 1.0
    assert iou_summary([7], [10], LAVT)["P@0.7"] == 1.0
    assert precision_at_k([0.5, 0.7], 0.5, ">") == 0.5
    assert precision_at_k([0.5, 0.7], 0.5, ">=") == 1.0
    assert overall_iou([1, 2], [2, 4]) == 0.5
    assert mean_iou([0, 0], [0, 4], LAVT) == 0.0 and mean_iou([0, 0], [0, 4], MTTR) == pytest.approx(0.5)


def test_iou_errors() -> None:
    with pytest.raises(InvalidInputError, match="no samples"):
        iou_summary([], [], MTTR)
    with pytest.raises(InvalidInputError, match="unknown IoU protocol"):
        iou_summary([1], [2], "nope")
    with pytest.raises(InvalidInputError, match="0 <= I <= U"):
        iou_summary([3], [2], LAVT)


def _square(h: int, w: int, y: int, x: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y:y + size, x:x + size] = True
    return m


def test_coco_map_hand_cases() -> None:
    h = w = 64
    gts = [{"image_id": f"v_a_f_{i}_i_1", "mask": _square(h, w, 4 * i, 4 * i, 20)} for i in range(4)]
    perfect = [{"image_id": g["image_id"], "mask": g["mask"], "score": 0.9} for g in gts]
    ap = coco_mask_map(gts, perfect)
    assert ap["mAP 0.5:0.95"] == 1.0 and ap["AP 0.5"] == 1.0 and ap["AP 0.75"] == 1.0
    assert ap["AP 0.5:0.95 S"] == 1.0  # 20x20 = 400 px < 32² is "small"
    assert ap["AP 0.5:0.95 M"] == -1.0 and ap["AP 0.5:0.95 L"] == -1.0  # no GT there: pycocotools reports -1

    # one confident false positive on the first image, ranked above every true positive
    fp = perfect + [{"image_id": gts[0]["image_id"], "mask": _square(h, w, 44, 0, 20), "score": 0.99}]
    ap = coco_mask_map(gts, fp)
    # ranked: FP, TP, TP, TP, TP -> precision 1/2, 2/3, 3/4, 4/5 at recall .25, .5, .75, 1; the interpolated
    # precision (max over higher recalls) is 4/5 at all 101 recall points
    assert ap["AP 0.5"] == pytest.approx(0.8)

    # shifted masks: 20x20 squares shifted by 4 px diagonally: IoU = 256 / 544 = 0.47 -> AP 0 at every threshold
    shifted = [{"image_id": g["image_id"], "mask": np.roll(g["mask"], (4, 4), (0, 1)), "score": 0.5} for g in gts]
    ap = coco_mask_map(gts, shifted)
    assert ap["mAP 0.5:0.95"] == 0.0 and ap["AP 0.5"] == 0.0
    # shifted by 2 px in x only: IoU = 360 / 440 = 0.818 -> TP at thresholds 0.50..0.80 (7 of 10)
    shifted = [{"image_id": g["image_id"], "mask": np.roll(g["mask"], 2, 1), "score": 0.5} for g in gts]
    ap = coco_mask_map(gts, shifted)
    assert ap["AP 0.5"] == 1.0 and ap["AP 0.75"] == 1.0
    assert ap["mAP 0.5:0.95"] == pytest.approx(0.7)


def test_coco_map_agrees_with_direct_pycocotools() -> None:
    rng = np.random.default_rng(7)
    gts, preds = [], []
    for i in range(12):
        size = int(rng.integers(4, 40))
        g = _square(80, 96, int(rng.integers(0, 40)), int(rng.integers(0, 50)), size)
        gts.append({"image_id": f"v_vid{i % 3}_f_{i}_i_{i % 2}", "mask": g})
        for q in range(5):
            m = np.roll(g, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), (0, 1)) if q else g
            preds.append({"image_id": gts[-1]["image_id"], "mask": m, "score": float(rng.random())})
    ours = coco_mask_map(gts, preds)
    assert list(ours.values()) == pycocotools_map(gts, preds)
    # RLE input gives the same
    as_rle = [{"image_id": p["image_id"], "segmentation": encode_rle(p["mask"]), "score": p["score"]} for p in preds]
    assert coco_mask_map(gts, as_rle) == ours


def test_coco_map_errors() -> None:
    g = [{"image_id": "a", "mask": _square(10, 10, 0, 0, 4)}]
    with pytest.raises(InvalidInputError, match="no predictions"):
        coco_mask_map(g, [])
    with pytest.raises(InvalidInputError, match="no ground truth"):
        coco_mask_map(g, [{"image_id": "b", "mask": g[0]["mask"], "score": 1.0}])
    with pytest.raises(InvalidInputError, match="original resolution"):
        coco_mask_map(g, [{"image_id": "a", "mask": np.zeros((5, 5), bool), "score": 1.0}])
    with pytest.raises(InvalidInputError, match="twice"):
        coco_mask_map(g + g, [{"image_id": "a", "mask": g[0]["mask"], "score": 1.0}])

"""A2D/JHMDB-Sentences (MTTR), A2D-S+ (Locater) and RefCOCO (LAVT) evaluators on hand-built samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lvseg.errors import InvalidInputError
from lvseg.metrics import (
    LAVT,
    LOCATER,
    MTTR,
    LAVTEvaluator,
    LocaterEvaluator,
    MTTREvaluator,
    a2d_image_id,
    coco_mask_map,
    intersection_union,
    iou_summary,
)


def _square(y: int, x: int, size: int, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y:y + size, x:x + size] = True
    return m


def test_mttr_evaluator_all_queries_for_map_top1_for_iou() -> None:
    ev = MTTREvaluator("A2D-Sentences")
    gt1, gt2 = _square(5, 5, 12), _square(20, 30, 10)
    good1, bad1 = gt1, _square(25, 0, 12)
    # image 1: the best-scoring query is right; image 2: the best-scoring query is wrong, a lower one is right
    ev.add(a2d_image_id("vid", 3, 1), gt1, np.stack([good1, bad1]), [0.9, 0.2])
    ev.add(a2d_image_id("vid", 7, 1), gt2, np.stack([_square(0, 0, 10), gt2]), torch.tensor([0.8, 0.7]))
    out = ev.summary()
    # IoU metrics use only the top query: image 1 IoU 1, image 2 IoU 0 (epsilon aside)
    i = [144, 0]
    u = [144, 200]
    top1 = iou_summary(i, u, MTTR)
    assert out["P@0.5"] == 50.0 and out["P@0.9"] == 50.0
    assert out["overall_iou"] == 100 * 144 / 344 and out["mean_iou"] == 100 * top1["mean_iou"]
    # mAP uses all four predictions
    expected = coco_mask_map(
        [{"image_id": "v_vid_f_3_i_1", "mask": gt1}, {"image_id": "v_vid_f_7_i_1", "mask": gt2}],
        [{"image_id": "v_vid_f_3_i_1", "mask": good1, "score": 0.9},
         {"image_id": "v_vid_f_3_i_1", "mask": bad1, "score": 0.2},
         {"image_id": "v_vid_f_7_i_1", "mask": _square(0, 0, 10), "score": 0.8},
         {"image_id": "v_vid_f_7_i_1", "mask": gt2, "score": 0.7}])
    assert out["mAP 0.5:0.95"] == 100 * expected["mAP 0.5:0.95"]
    assert 0 < out["mAP 0.5:0.95"] < 100
    assert "mAP 0.5:0.95" in ev.format_table()


def test_mttr_ties_pick_the_last_prediction() -> None:
    gt = _square(5, 5, 10)
    ev = MTTREvaluator()
    ev.add("img", gt, np.stack([_square(30, 30, 5), gt]), [0.5, 0.5])  # sorted(...)[-1] -> the second
    assert ev.summary()["P@0.9"] == 100.0
    ev = MTTREvaluator()
    ev.add("img", gt, np.stack([gt, _square(30, 30, 5)]), [0.5, 0.5])
    assert ev.summary()["P@0.5"] == 0.0


def test_mttr_add_sample_uses_annotated_frames() -> None:
    masks = np.zeros((3, 40, 50), bool)
    masks[1] = _square(5, 5, 12)
    sample = {"video": "abc", "masks": masks, "annotated": [False, True, False], "frame_ids": ["00010", "00011",
              "00012"], "instance_id": 2}
    ev = MTTREvaluator("JHMDB-Sentences")
    ev.add_sample(sample, masks, torch.tensor([0.1, 0.9, 0.3]))
    assert [g["image_id"] for g in ev.ground_truth] == ["v_abc_f_11_i_2"]
    assert ev.summary()["overall_iou"] == 100.0
    with pytest.raises(InvalidInputError, match="added twice"):
        ev.add_sample(sample, masks, torch.tensor([0.1, 0.9, 0.3]))
    with pytest.raises(InvalidInputError, match="scores"):
        MTTREvaluator().add("x", masks[1], np.stack([masks[1], masks[1]]), [0.3])


def test_locater_evaluator_frames_in_order() -> None:
    rng = np.random.default_rng(3)
    gts = rng.random((6, 3, 16, 16)) < 0.3
    preds = gts ^ (rng.random((6, 3, 16, 16)) < 0.2)
    gts[2, 1] = False
    preds[2, 1] = False  # empty union -> IoU 1 under Locater
    ev = LocaterEvaluator()
    for p, g in zip(preds, gts):
        ev.add_sample({"masks": g, "annotated": [True, True, False]}, p, None)
    inter, union = intersection_union(preds[:, :2].reshape(-1, 16, 16), gts[:, :2].reshape(-1, 16, 16))
    expected = iou_summary(inter, union, LOCATER, scale=100.0)
    assert ev.summary() == expected
    assert set(expected) == {"overall_iou", "mean_iou", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "mAP"}
    assert expected["mAP"] == pytest.approx(np.mean([expected[f"P@{k}"] for k in (0.5, 0.6, 0.7, 0.8, 0.9)]))


def test_lavt_evaluator_resizes_ground_truth_to_480() -> None:
    gt = np.zeros((300, 200), bool)
    gt[10:150, 20:120] = True
    ev = LAVTEvaluator("RefCOCO")
    gt480 = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((480, 480), Image.NEAREST)) != 0
    ev.add(gt480, gt)  # a 480x480 prediction equal to the resized GT -> IoU 1
    ev.add(np.zeros((300, 200), bool), np.zeros((300, 200), bool))  # empty/empty -> IoU 0 under LAVT
    out = ev.summary()
    assert out["mean_iou"] == 50.0 and out["P@0.9"] == 50.0
    i, u = intersection_union(gt480, gt480)
    assert out["overall_iou"] == 100.0 and int(u) == gt480.sum()
    # without the 480 rule (size=None) the original resolution is used
    ev = LAVTEvaluator(size=None)
    ev.add_sample({"masks": gt[None]}, gt[None], None)
    assert ev.summary()["overall_iou"] == 100.0
    assert LAVT.comparison == ">=" and LAVT.empty_iou == 0.0


def test_mttr_add_sample_uses_the_dataset_image_id() -> None:
    """lvseg.data.A2DSentences samples: one annotated frame in a clip and MTTR's image id."""
    masks = np.zeros((4, 40, 50), bool)
    masks[2] = _square(5, 5, 12)
    sample = {"video": "abc", "masks": masks, "annotated": [False, False, True, False],
              "image_id": "v_abc_f_17_i_3", "instance_id": 3}
    pred = np.zeros_like(masks)
    pred[2] = _square(6, 5, 12)
    ev = MTTREvaluator()
    ev.add_sample(sample, pred, [0.0, 0.0, 0.7, 0.0])
    assert [g["image_id"] for g in ev.ground_truth] == ["v_abc_f_17_i_3"]
    assert ev.summary()["overall_iou"] == 100 * 132 / 156

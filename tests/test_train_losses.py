"""Hungarian matching and ReferFormer loss values on hand-built cases."""

import itertools
import math

import pytest
import torch

from lvseg.train.boxes import box_cxcywh_to_xyxy, generalized_box_iou, mask_boxes_cxcywh, pixel_boxes_to_cxcywh
from lvseg.train.losses import LossWeights, ReferFormerCriterion, dice_loss, sigmoid_focal_loss
from lvseg.train.matcher import HungarianMatcher, MatchCosts, VideoTarget, downsample_masks


def _target(boxes, masks, valid=None, labels=None):
    n, t = boxes.shape[:2]
    return VideoTarget(labels=torch.zeros(n, dtype=torch.int64) if labels is None else labels, boxes=boxes,
                       masks=masks, valid=torch.ones(n, t, dtype=torch.bool) if valid is None else valid,
                       frames=torch.ones(t, dtype=torch.bool))


def _square_masks(t, size, x0, y0, side):
    m = torch.zeros(t, size, size, dtype=torch.bool)
    m[:, y0:y0 + side, x0:x0 + side] = True
    return m


def test_focal_and_dice_values():
    # logit 0, target 1: p = 0.5, CE = ln 2, (1 - p_t)^2 = 1/4, alpha = 0.25
    got = sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]))
    assert got.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    # target 0 uses 1 - alpha
    got = sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([0.0]))
    assert got.item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)
    # p = 0.5 on 4 pixels, 2 of them positive: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    d = dice_loss(torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert d.item() == pytest.approx(0.4, rel=1e-6)
    assert dice_loss(torch.tensor([[20.0, -20.0]]), torch.tensor([[1.0, 0.0]])).item() < 1e-6


def test_giou_and_box_conversions():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert generalized_box_iou(a, a).item() == pytest.approx(1.0)
    # disjoint: IoU 0, hull 3, union 2 -> -1/3
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert generalized_box_iou(a, b).item() == pytest.approx(-1 / 3)
    # half overlap: IoU 1/3, hull = union -> 1/3
    c = torch.tensor([[0.5, 0.0, 1.5, 1.0]])
    assert generalized_box_iou(a, c).item() == pytest.approx(1 / 3)
    # inclusive pixel box of a 10x20 frame: pixels 2..5 wide (4 px), 0..9 tall
    box = pixel_boxes_to_cxcywh(torch.tensor([[2.0, 0.0, 5.0, 9.0]]), torch.tensor([[10, 20]]))
    assert torch.allclose(box, torch.tensor([[4 / 20, 0.5, 4 / 20, 1.0]]))
    assert torch.allclose(box_cxcywh_to_xyxy(box), torch.tensor([[0.1, 0.0, 0.3, 1.0]]))
    masks = torch.zeros(2, 10, 20, dtype=torch.bool)
    masks[0, 0:10, 2:6] = True
    boxes, vis = mask_boxes_cxcywh(masks, torch.tensor([[10, 20], [10, 20]]))
    assert vis.tolist() == [True, False]
    assert torch.allclose(boxes[0], box[0]) and boxes[1].abs().sum() == 0


def test_downsample_masks_takes_cell_centres():
    m = torch.zeros(1, 8, 8)
    m[0, 2, 6] = 1  # the centre pixel (offset 2) of cell (0, 1)
    m[0, 1, 1] = 1  # not a centre
    sub = downsample_masks(m, (2, 2))
    assert sub.tolist() == [[[0.0, 1.0], [0.0, 0.0]]]
    assert downsample_masks(torch.ones(1, 9, 9), (3, 3)).shape == (1, 3, 3)  # 9 -> cells at 2, 6 + padding


def _outputs(t, q, h, good_query, target_box, target_mask_small):
    logits = torch.full((1, t, q, 1), -3.0)
    logits[0, :, good_query, 0] = 3.0
    boxes = torch.tensor([0.8, 0.8, 0.1, 0.1]).repeat(1, t, q, 1)
    boxes[0, :, good_query] = target_box
    masks = torch.full((1, t, q, h, h), -5.0)
    masks[0, :, good_query] = torch.where(target_mask_small, 5.0, -5.0)
    return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks}


def test_matcher_picks_the_query_that_fits_over_the_clip():
    t, q, size = 3, 4, 16
    gt = _square_masks(t, size, 4, 4, 8)
    box, _ = mask_boxes_cxcywh(gt, torch.tensor([[size, size]] * t))
    small = downsample_masks(gt.float(), (4, 4)) > 0
    out = _outputs(t, q, 4, 2, box, small)
    target = _target(box[None], gt[None])
    (rows, cols), = HungarianMatcher()(out, [target])
    assert rows.tolist() == [2] and cols.tolist() == [0]
    cost = HungarianMatcher().cost_matrix(out["pred_logits"][0], out["pred_boxes"][0], out["pred_masks"][0], target)
    assert cost.shape == (q, 1) and cost.argmin().item() == 2
    # class cost only counts frames where the target is visible: a query that is right only in the one visible
    # frame wins over one that is confident everywhere else
    out2 = _outputs(t, q, 4, 1, box, small)
    out2["pred_logits"][0, 0, 3, 0] = 8.0
    costs = MatchCosts(bbox=0, giou=0, mask=0, dice=0)
    vis = torch.tensor([[True, False, False]])
    (rows, _), = HungarianMatcher(costs)(out2, [_target(box[None], gt[None], valid=vis)])
    assert rows.tolist() == [3]


def test_matcher_assignment_is_optimal_for_several_targets():
    torch.manual_seed(0)
    t, q, n, h = 2, 5, 3, 4
    out = {"pred_logits": torch.randn(1, t, q, 1), "pred_boxes": torch.rand(1, t, q, 4) * 0.5 + 0.25,
           "pred_masks": torch.randn(1, t, q, h, h)}
    boxes = torch.rand(n, t, 4) * 0.5 + 0.25
    masks = torch.rand(n, t, 16, 16) > 0.5
    target = _target(boxes, masks)
    matcher = HungarianMatcher()
    (rows, cols), = matcher(out, [target])
    cost = matcher.cost_matrix(out["pred_logits"][0], out["pred_boxes"][0], out["pred_masks"][0], target)
    best = min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))
    assert sum(cost[r, c].item() for r, c in zip(rows, cols)) == pytest.approx(best, rel=1e-6)
    assert sorted(cols.tolist()) == [0, 1, 2]


def test_criterion_values_on_a_hand_built_case():
    t, q, size = 2, 3, 16
    gt = _square_masks(t, size, 4, 4, 8)
    box, _ = mask_boxes_cxcywh(gt, torch.tensor([[size, size]] * t))
    small = downsample_masks(gt.float(), (4, 4)) > 0
    out = _outputs(t, q, 4, 0, box, small)
    shifted = box.clone()
    shifted[:, 0] += 0.1  # the matched query's box is 0.1 off in cx in both frames
    out["pred_boxes"][0, :, 0] = shifted
    crit = ReferFormerCriterion(aux_loss=False)
    losses = crit(out, [_target(box[None], gt[None])])
    # num_boxes = 1 object x 2 frames; L1 = 2 * 0.1 / 2 = 0.1, times the weight 5
    assert losses["loss_bbox"].item() == pytest.approx(0.5, rel=1e-5)
    # GIoU of a 0.5-wide box shifted by 0.1: IoU = 0.4/0.6, hull = union -> 1 - 2/3 per frame
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - 0.4 / 0.6) * 2 / 2, rel=1e-5)
    # class: matched query has logit 3 with target 1, the 2 others logit -3 with target 0, per frame
    pos = sigmoid_focal_loss(torch.tensor(3.0), torch.tensor(1.0)).item()
    neg = sigmoid_focal_loss(torch.tensor(-3.0), torch.tensor(0.0)).item()
    assert losses["loss_ce"].item() == pytest.approx(2 * t * (pos + 2 * neg) / 2, rel=1e-5)
    # masks: logits +-5 exactly on the (downsampled) target
    # 4 of the 16 cells are foreground; a background pixel's loss is (1 - alpha) / alpha = 3x a foreground one
    fg = sigmoid_focal_loss(torch.tensor(5.0), torch.tensor(1.0)).item()
    bg = sigmoid_focal_loss(torch.tensor(-5.0), torch.tensor(0.0)).item()
    assert bg == pytest.approx(3 * fg, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(2 * t * (4 * fg + 12 * bg) / 16 / 2, rel=1e-4)
    pm = torch.where(small, 5.0, -5.0).flatten(1)
    assert losses["loss_dice"].item() == pytest.approx(5 * dice_loss(pm, small.float().flatten(1)).sum().item() / 2,
                                                       rel=1e-5)
    assert losses["loss"].item() == pytest.approx(sum(v.item() for k, v in losses.items() if k != "loss"), rel=1e-6)


def test_criterion_adds_auxiliary_layers_and_weights():
    t, q, size = 2, 3, 16
    gt = _square_masks(t, size, 2, 2, 6)
    box, _ = mask_boxes_cxcywh(gt, torch.tensor([[size, size]] * t))
    small = downsample_masks(gt.float(), (4, 4)) > 0
    out = _outputs(t, q, 4, 1, box, small)
    out["aux_outputs"] = [_outputs(t, q, 4, 2, box, small), _outputs(t, q, 4, 0, box, small)]
    base = ReferFormerCriterion()(out, [_target(box[None], gt[None])])
    assert {"loss_ce_0", "loss_dice_1"} <= set(base) and "loss_ce_2" not in base
    assert base["loss_ce_0"].item() == pytest.approx(base["loss_ce"].item(), rel=1e-6)  # same fit, other query
    doubled = ReferFormerCriterion(LossWeights(dice=10.0))(out, [_target(box[None], gt[None])])
    assert doubled["loss_dice"].item() == pytest.approx(2 * base["loss_dice"].item(), rel=1e-6)


def test_criterion_gradient_flows_only_where_it_should():
    t, q, size = 2, 3, 16
    gt = _square_masks(t, size, 4, 4, 8)
    box, _ = mask_boxes_cxcywh(gt, torch.tensor([[size, size]] * t))
    small = downsample_masks(gt.float(), (4, 4)) > 0
    out = _outputs(t, q, 4, 0, box, small)
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        out[key] = out[key].clone().requires_grad_(True)
    ReferFormerCriterion(aux_loss=False)(out, [_target(box[None], gt[None])])["loss"].backward()
    assert out["pred_boxes"].grad[0, :, 1:].abs().sum() == 0  # unmatched queries get no box gradient
    assert out["pred_masks"].grad[0, :, 1:].abs().sum() == 0
    assert out["pred_logits"].grad[0, :, 1:].abs().sum() > 0  # but are pushed towards "no object"

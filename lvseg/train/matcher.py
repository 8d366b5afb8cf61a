"""Hungarian matching of a video's queries to its referred objects, over the whole clip (ReferFormer).

A query index means the same object in every frame, so a query is matched to a target once per clip: the cost of
pairing query ``q`` with target ``j`` is averaged over the clip's frames (class, box and GIoU costs over the frames
where the target is visible, mask costs over all frames), then ``scipy.optimize.linear_sum_assignment`` picks the
cheapest one-to-one assignment. With one referred object (ReferFormer's Ref-YouTube-VOS training, where several
referred objects are merged into one mask) this is the single lowest-cost query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError
from .boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["MatchCosts", "HungarianMatcher", "VideoTarget", "downsample_masks"]


@dataclass
class VideoTarget:
    """The ground truth of one video (``n`` objects, ``t`` frames).

    Attributes:
        labels: int64 [n] class indices (0 for binary referring models).
        boxes: float [n, t, 4] (cx, cy, w, h) normalised by the unpadded frame size.
        masks: bool/float [n, t, H, W] at input resolution.
        valid: bool [n, t] object visible (and annotated) in the frame.
        frames: bool [t] real (non-padding) frames; mask costs and losses ignore padding frames.
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    frames: torch.Tensor

    def __post_init__(self) -> None:
        n, t = self.boxes.shape[:2]
        if self.labels.shape != (n,) or self.masks.shape[:2] != (n, t) or self.valid.shape != (n, t):
            raise ConfigError(f"inconsistent target shapes: labels {tuple(self.labels.shape)}, boxes "
                              f"{tuple(self.boxes.shape)}, masks {tuple(self.masks.shape)}, valid "
                              f"{tuple(self.valid.shape)}")


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching costs (ReferFormer's defaults)."""

    cls: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    mask: float = 2.0
    dice: float = 5.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def downsample_masks(masks: torch.Tensor, size: tuple[int, int], stride: int = 4) -> torch.Tensor:
    """Ground-truth masks [..., H, W] -> [..., h, w] on the prediction grid of a stride-``stride`` mask head.

    Takes one pixel per cell, from offset ``stride // 2`` (the cell centre; ReferFormer subsamples the same way),
    then pads or crops to ``size`` when ``H`` is not a multiple of the stride.
    """
    start = stride // 2
    sub = masks[..., start::stride, start::stride]
    h, w = size
    sub = sub[..., :h, :w]
    if sub.shape[-2:] != (h, w):
        sub = F.pad(sub, (0, w - sub.shape[-1], 0, h - sub.shape[-2]))
    return sub


class HungarianMatcher:
    """Match each video's queries to its targets over the clip.

    ``__call__(outputs, targets)`` takes ``pred_logits`` [b, t, q, K], ``pred_boxes`` [b, t, q, 4] and
    ``pred_masks`` [b, t, q, h, w] (logits), and ``b`` :class:`VideoTarget` s; it returns, per video, a pair of
    int64 tensors ``(query_indices [n], target_indices [n])``.
    """

    def __init__(self, costs: MatchCosts | None = None, mask_stride: int = 4) -> None:
        self.costs = costs or MatchCosts()
        self.mask_stride = mask_stride

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                    target: VideoTarget) -> torch.Tensor:
        """The [q, n] matching cost of one video: logits [t, q, K], boxes [t, q, 4], masks [t, q, h, w]."""
        c = self.costs
        t, q = logits.shape[:2]
        n = target.labels.shape[0]
        prob = logits.float().sigmoid()  # [t, q, K]
        # focal-loss style class cost (Deformable-DETR): positive minus negative cost of the target's class
        neg = (1 - c.focal_alpha) * prob.pow(c.focal_gamma) * -(1 - prob + 1e-8).log()
        pos = c.focal_alpha * (1 - prob).pow(c.focal_gamma) * -(prob + 1e-8).log()
        class_cost = (pos - neg)[:, :, target.labels]  # [t, q, n]
        pred_xyxy = box_cxcywh_to_xyxy(boxes.float())  # [t, q, 4]
        tgt_xyxy = box_cxcywh_to_xyxy(target.boxes.float())  # [n, t, 4]
        l1 = (boxes.float()[:, :, None, :] - target.boxes.float().transpose(0, 1)[:, None, :, :]).abs().sum(-1)
        giou = torch.stack([generalized_box_iou(pred_xyxy[f], tgt_xyxy[:, f]) for f in range(t)])  # [t, q, n]
        valid = target.valid.transpose(0, 1)[:, None, :].float()  # [t, 1, n]
        seen = valid.sum(0).clamp(min=1)  # [1, n]
        cost = (c.cls * (class_cost * valid).sum(0) + c.bbox * (l1 * valid).sum(0)
                - c.giou * (giou * valid).sum(0)) / seen  # [q, n]

        # mask costs over the clip's real frames: sigmoid focal (mean over pixels) and dice
        keep = target.frames.bool()
        pred = masks[keep].float().permute(1, 0, 2, 3).flatten(1)  # [q, t' h w]
        gt = downsample_masks(target.masks[:, keep].float(), tuple(masks.shape[-2:]), self.mask_stride)
        gt = gt.flatten(1)  # [n, t' h w]
        p = pred.sigmoid()
        focal_pos = c.focal_alpha * (1 - p).pow(c.focal_gamma) * F.binary_cross_entropy_with_logits(
            pred, torch.ones_like(pred), reduction="none")
        focal_neg = (1 - c.focal_alpha) * p.pow(c.focal_gamma) * F.binary_cross_entropy_with_logits(
            pred, torch.zeros_like(pred), reduction="none")
        mask_cost = (focal_pos @ gt.T + focal_neg @ (1 - gt).T) / max(pred.shape[1], 1)
        dice_cost = 1 - (2 * p @ gt.T + 1) / (p.sum(-1)[:, None] + gt.sum(-1)[None, :] + 1)
        return cost + c.mask * mask_cost + c.dice * dice_cost

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Any],
                 targets: Sequence[VideoTarget]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ConfigError(f"{logits.shape[0]} videos but {len(targets)} targets")
        result = []
        for i, target in enumerate(targets):
            if target.labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                result.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[i], boxes[i], masks[i], target).cpu()
            if not torch.isfinite(cost).all():
                raise FloatingPointError("the matching cost has NaN/inf entries: the model's outputs diverged "
                                         "(lower the learning rate or enable gradient clipping)")
            rows, cols = linear_sum_assignment(cost.numpy())
            result.append((torch.as_tensor(np.asarray(rows), dtype=torch.int64),
                           torch.as_tensor(np.asarray(cols), dtype=torch.int64)))
        return result

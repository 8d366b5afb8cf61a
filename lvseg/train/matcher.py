"""Hungarian matching of a video's queries to its objects, over the whole clip (ReferFormer, MTTR).

A query index means the same object in every frame, so a query is matched to a target once per clip: the cost of
pairing query ``q`` with target ``j`` is averaged over the clip's frames (class, box and GIoU costs over the frames
where the target is visible, mask costs over all frames), then ``scipy.optimize.linear_sum_assignment`` picks the
cheapest one-to-one assignment. With one referred object (ReferFormer's Ref-YouTube-VOS training, where several
referred objects are merged into one mask) this is the single lowest-cost query.

MTTR (:class:`MTTRMatcher`) matches the same way, per clip, with its own costs: the reference ("is referred")
probability against the referred/no-object target and the dice coefficient of the masks, both averaged over the
decoded frames; every annotated instance is a target, not only the referred one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError
from .boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = [
    "MatchCosts",
    "HungarianMatcher",
    "VideoTarget",
    "downsample_masks",
    "MTTRTarget",
    "MTTRMatchCosts",
    "MTTRMatcher",
    "upsample_mask_logits",
]


def _assign(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal (query indices, target indices) for a cost matrix [Q, N] (Hungarian, scipy)."""
    cost = cost.detach().cpu()
    if not torch.isfinite(cost).all():
        raise FloatingPointError(
            "the matching cost has NaN/inf entries: the model's outputs diverged "
            "(lower the learning rate or enable gradient clipping)"
        )
    rows, cols = linear_sum_assignment(cost.numpy())
    return (torch.as_tensor(np.asarray(rows), dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64))


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
            raise ConfigError(
                f"inconsistent target shapes: labels {tuple(self.labels.shape)}, boxes "
                f"{tuple(self.boxes.shape)}, masks {tuple(self.masks.shape)}, valid "
                f"{tuple(self.valid.shape)}"
            )


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


def downsample_masks(masks: torch.Tensor, size: Sequence[int], stride: int = 4) -> torch.Tensor:
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
    def cost_matrix(
        self, logits: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, target: VideoTarget
    ) -> torch.Tensor:
        """The [q, n] matching cost of one video: logits [t, q, K], boxes [t, q, 4], masks [t, q, h, w]."""
        c = self.costs
        t = logits.shape[0]
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
        cost = (
            c.cls * (class_cost * valid).sum(0) + c.bbox * (l1 * valid).sum(0) - c.giou * (giou * valid).sum(0)
        ) / seen  # [q, n]

        # mask costs over the clip's real frames: sigmoid focal (mean over pixels) and dice
        keep = target.frames.bool()
        pred = masks[keep].float().permute(1, 0, 2, 3).flatten(1)  # [q, t' h w]
        gt = downsample_masks(target.masks[:, keep].float(), tuple(masks.shape[-2:]), self.mask_stride)
        gt = gt.flatten(1)  # [n, t' h w]
        p = pred.sigmoid()
        focal_pos = (
            c.focal_alpha
            * (1 - p).pow(c.focal_gamma)
            * F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
        )
        focal_neg = (
            (1 - c.focal_alpha)
            * p.pow(c.focal_gamma)
            * F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
        )
        mask_cost = (focal_pos @ gt.T + focal_neg @ (1 - gt).T) / max(pred.shape[1], 1)
        dice_cost = 1 - (2 * p @ gt.T + 1) / (p.sum(-1)[:, None] + gt.sum(-1)[None, :] + 1)
        return cost + c.mask * mask_cost + c.dice * dice_cost

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, Any], targets: Sequence[VideoTarget]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ConfigError(f"{logits.shape[0]} videos but {len(targets)} targets")
        result = []
        for i, target in enumerate(targets):
            if target.labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                result.append((empty, empty))
                continue
            result.append(_assign(self.cost_matrix(logits[i], boxes[i], masks[i], target)))
        return result


# ------------------------------------------------------------------------------------------------ MTTR
@dataclass
class MTTRTarget:
    """The ground truth of one MTTR clip on the ``t`` frames the model decodes (its ``valid_indices``).

    Attributes:
        masks: bool/float [n, t, H, W] every annotated instance at the (padded) input resolution: A2D-Sentences
            gives all instances of the annotated frame, Ref-YouTube-VOS every object of the clip. ``n >= 1``.
        referred: index in ``masks`` of the instance the expression refers to.
        visible: bool [t], whether the referred instance is visible in each frame (Ref-YouTube-VOS's
            ``is_ref_inst_visible``), or None when it is taken as visible in every frame (A2D-Sentences).
    """

    masks: torch.Tensor
    referred: int
    visible: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.masks.dim() != 4 or self.masks.shape[0] < 1:
            raise ConfigError(f"MTTR target masks must be [n >= 1, t, H, W], got {tuple(self.masks.shape)}")
        if not 0 <= int(self.referred) < self.masks.shape[0]:
            raise ConfigError(f"referred index {self.referred} is outside the target's {self.masks.shape[0]} instances")
        if self.visible is not None and self.visible.shape != (self.masks.shape[1],):
            raise ConfigError(f"visible must be bool [t={self.masks.shape[1]}], got {tuple(self.visible.shape)}")

    def is_referred_targets(self, device: torch.device | None = None) -> torch.Tensor:
        """The two-way reference target of every instance in every frame: float [t, n, 2].

        ``[1, 0]`` ("referred") for the referred instance on the frames where it is visible, ``[0, 1]`` ("no
        object") everywhere else: the other instances and the frames where the referred one is hidden.
        """
        n, t = self.masks.shape[:2]
        out = torch.zeros((t, n, 2), device=device)
        out[..., 1] = 1.0
        frames = (
            torch.ones(t, dtype=torch.bool, device=device) if self.visible is None else self.visible.to(device).bool()
        )
        out[frames, int(self.referred)] = torch.tensor([1.0, 0.0], device=device)
        return out


def upsample_mask_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """MTTR compares masks at the input resolution: stride-4 logits [..., h, w] -> [..., H, W] (bilinear,
    ``align_corners=False``, as the official matcher and loss do)."""
    lead = logits.shape[:-2]
    x = F.interpolate(
        logits.float().reshape(-1, 1, *logits.shape[-2:]), size=tuple(size), mode="bilinear", align_corners=False
    )
    return x.reshape(*lead, *x.shape[-2:])


@dataclass(frozen=True)
class MTTRMatchCosts:
    """Weights of MTTR's matching costs (``set_cost_is_referred`` 2, ``set_cost_dice`` 5 in every official config)."""

    is_referred: float = 2.0
    dice: float = 5.0

    def __post_init__(self) -> None:
        if self.is_referred == 0 and self.dice == 0:
            raise ConfigError("MTTR matching costs cannot both be 0")


class MTTRMatcher:
    """Hungarian matching of each clip's queries to its instance sequences (MTTR).

    Query ``q`` is one object in every frame, so the cost of pairing it with instance ``j`` is averaged over the
    decoded frames: ``is_referred * (-mean_t <softmax(is_referred logits), reference target>)
    + dice * (-mean_t dice coefficient)``, where the reference target is ``[1, 0]`` for the referred instance on
    its visible frames and ``[0, 1]`` otherwise, and the dice coefficient (with +1 smoothing) compares the
    sigmoid of the mask logits, upsampled to the target resolution, with the binary mask.

    ``__call__(outputs, targets)`` takes ``pred_is_referred`` [b, t, q, 2], ``pred_masks`` [b, t, q, h, w] and
    ``b`` :class:`MTTRTarget` s; it returns per clip ``(query_indices [n], instance_indices [n])`` (int64).
    """

    def __init__(self, costs: MTTRMatchCosts | None = None) -> None:
        self.costs = costs or MTTRMatchCosts()

    @torch.no_grad()
    def cost_matrix(self, is_referred: torch.Tensor, masks: torch.Tensor, target: MTTRTarget) -> torch.Tensor:
        """The [q, n] cost of one clip: is_referred [t, q, 2] logits, masks [t, q, h, w] logits."""
        c = self.costs
        cost = torch.zeros((masks.shape[1], target.masks.shape[0]), device=masks.device)
        if c.is_referred:
            prob = is_referred.float().softmax(-1)  # [t, q, 2]
            tgt = target.is_referred_targets(prob.device)  # [t, n, 2]
            cost = cost - c.is_referred * torch.einsum("tqc,tnc->qn", prob, tgt) / prob.shape[0]
        if c.dice:
            gt = target.masks.to(masks.device).float().transpose(0, 1).flatten(2)  # [t, n, P]
            p = upsample_mask_logits(masks, tuple(target.masks.shape[-2:])).sigmoid().flatten(2)  # [t, q, P]
            dice = (2 * p @ gt.transpose(1, 2) + 1) / (p.sum(-1)[:, :, None] + gt.sum(-1)[:, None, :] + 1)
            cost = cost - c.dice * dice.mean(0)
        return cost

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, Any], targets: Sequence[MTTRTarget]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits, masks = outputs["pred_is_referred"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ConfigError(f"{logits.shape[0]} clips but {len(targets)} targets")
        result = []
        for i, target in enumerate(targets):
            if target.masks.shape[1] != masks.shape[1]:
                raise ConfigError(
                    f"clip {i}: the model decoded {masks.shape[1]} frames but the target has "
                    f"{target.masks.shape[1]}; pass the same valid frames to both"
                )
            if target.masks.shape[0] > masks.shape[2]:
                raise ConfigError(
                    f"clip {i} has {target.masks.shape[0]} instances but the model only "
                    f"{masks.shape[2]} queries: raise num_queries"
                )
            result.append(_assign(self.cost_matrix(logits[i], masks[i], target)))
        return result

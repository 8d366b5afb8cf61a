"""Training objectives. ReferFormer: Hungarian matching over the clip, then focal class, L1 + GIoU box, and sigmoid
focal + dice mask losses on the matched query, with the same losses on every auxiliary decoder layer.

Normalisation follows DETR: every term is summed and divided by ``num_boxes`` (the number of target-frames in the
global batch, averaged over ranks), so the gradient of a data-parallel run equals that of one process with the
whole batch.

MTTR's objective (:class:`MTTRCriterion`, after mttr2021/MTTR ``models/criterion.py``): per decoder layer, its own
matching, a two-way reference cross-entropy (``eos_coef`` 0.1 on the queries not matched to the referred
instance) and sigmoid focal + dice mask losses on every matched instance at the input resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import (
    HungarianMatcher,
    MatchCosts,
    MTTRMatchCosts,
    MTTRMatcher,
    MTTRTarget,
    VideoTarget,
    downsample_masks,
    upsample_mask_logits,
)

__all__ = [
    "LossWeights",
    "ReferFormerCriterion",
    "MTTRLossWeights",
    "MTTRCriterion",
    "LAVTCriterion",
    "VLPRVOSLossWeights",
    "VLPRVOSCriterion",
    "LocaterCriterion",
    "balanced_bce_with_logits",
    "sigmoid_focal_loss",
    "dice_loss",
]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017); same shape as ``logits``. ``alpha < 0`` disables it."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss ``1 - (2 |p g| + 1) / (|p| + |g| + 1)``: logits, targets [N, P] -> [N]."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def _weighted_layers(
    layer_losses: Any,
    outputs: dict[str, Any],
    targets: Sequence[Any],
    norm: float,
    coef: dict[str, float],
    aux_loss: bool,
) -> dict[str, torch.Tensor]:
    """Weighted terms of the last decoder layer (``<name>``) and, with ``aux_loss``, of each earlier one
    (``<name>_<i>``), plus their sum ``loss``; ``layer_losses(outputs, targets, norm)`` gives one layer's terms."""
    out: dict[str, torch.Tensor] = {}
    layers = [("", outputs)]
    if aux_loss:
        layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
    for suffix, layer in layers:
        for name, value in layer_losses(layer, targets, norm).items():
            out[name + suffix] = value * coef[name]
    out["loss"] = torch.stack(list(out.values())).sum()
    return out


@dataclass(frozen=True)
class LossWeights:
    """Loss coefficients (ReferFormer: class 2, L1 5, GIoU 2, mask focal 2, dice 5)."""

    cls: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    mask: float = 2.0
    dice: float = 5.0


class ReferFormerCriterion(torch.nn.Module):
    """Matching + losses for :class:`lvseg.models.referformer.ReferFormer` outputs.

    ``forward(outputs, targets, num_boxes)`` returns a dict of weighted loss terms (``loss_ce``, ``loss_bbox``,
    ``loss_giou``, ``loss_mask``, ``loss_dice`` and ``<name>_<i>`` for auxiliary layer ``i``) and ``loss``, their
    sum. ``num_boxes`` is the global number of target-frames (see :func:`count_boxes`).
    """

    def __init__(
        self,
        weights: LossWeights | None = None,
        costs: MatchCosts | None = None,
        focal_alpha: float = 0.25,
        aux_loss: bool = True,
        mask_stride: int = 4,
    ) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.matcher = HungarianMatcher(costs, mask_stride=mask_stride)
        self.focal_alpha = focal_alpha
        self.aux_loss = aux_loss
        self.mask_stride = mask_stride

    @staticmethod
    def count_boxes(targets: Sequence[VideoTarget]) -> float:
        """Target-frames in this process's batch (objects x real frames), at least 1."""
        return float(max(sum(int(t.labels.numel()) * int(t.frames.sum()) for t in targets), 1))

    def layer_losses(
        self, outputs: dict[str, Any], targets: Sequence[VideoTarget], num_boxes: float
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one decoder layer's outputs."""
        logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
        matches = self.matcher(outputs, targets)
        b, t, _, _ = logits.shape
        device = logits.device

        # classification: every query of every real frame; the matched query is positive where its target is
        # visible, everything else is negative (focal loss handles the imbalance)
        onehot = torch.zeros_like(logits, dtype=torch.float32)
        frame_weight = torch.zeros((b, t, 1, 1), dtype=torch.float32, device=device)
        l1_terms, giou_terms, src_masks, tgt_masks = [], [], [], []
        for i, (target, (src, tgt)) in enumerate(zip(targets, matches)):
            frame_weight[i, target.frames.to(device).bool()] = 1.0
            for s, j in zip(src.tolist(), tgt.tolist()):
                vis = target.valid[j].to(device).bool()
                onehot[i, vis, s, int(target.labels[j])] = 1.0
                if vis.any():
                    pb = boxes[i, vis, s].float()
                    tb = target.boxes[j, vis].to(device).float()
                    l1_terms.append((pb - tb).abs().sum())
                    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pb), box_cxcywh_to_xyxy(tb)))
                    giou_terms.append((1 - giou).sum())
                keep = target.frames.to(device).bool()
                pm = masks[i, keep, s].float()  # [t', h, w]
                tm = downsample_masks(target.masks[j, keep].to(device).float(), tuple(pm.shape[-2:]), self.mask_stride)
                src_masks.append(pm.flatten(1))
                tgt_masks.append(tm.flatten(1))
        focal = sigmoid_focal_loss(logits.float(), onehot, self.focal_alpha) * frame_weight
        zero = logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) when nothing is matched
        losses = {"loss_ce": focal.sum() / num_boxes}
        losses["loss_bbox"] = (torch.stack(l1_terms).sum() / num_boxes) if l1_terms else zero + boxes.sum() * 0
        losses["loss_giou"] = (torch.stack(giou_terms).sum() / num_boxes) if giou_terms else zero + boxes.sum() * 0
        if src_masks:
            pm, tm = torch.cat(src_masks), torch.cat(tgt_masks)
            losses["loss_mask"] = sigmoid_focal_loss(pm, tm, self.focal_alpha).mean(1).sum() / num_boxes
            losses["loss_dice"] = dice_loss(pm, tm).sum() / num_boxes
        else:
            losses["loss_mask"] = zero + masks.sum() * 0
            losses["loss_dice"] = zero + masks.sum() * 0
        return losses

    def forward(
        self, outputs: dict[str, Any], targets: Sequence[VideoTarget], num_boxes: float | None = None
    ) -> dict[str, torch.Tensor]:
        if num_boxes is None:
            num_boxes = self.count_boxes(targets)
        w = self.weights
        coef = {"loss_ce": w.cls, "loss_bbox": w.bbox, "loss_giou": w.giou, "loss_mask": w.mask, "loss_dice": w.dice}
        return _weighted_layers(self.layer_losses, outputs, targets, num_boxes, coef, self.aux_loss)


# ------------------------------------------------------------------------------------------------ MTTR
@dataclass(frozen=True)
class MTTRLossWeights:
    """MTTR's loss coefficients (every official config: is_referred 2, sigmoid focal 2, dice 5) and ``eos_coef``,
    the weight of the "no object" reference term on the queries not matched to the referred instance (0.1)."""

    is_referred: float = 2.0
    sigmoid_focal: float = 2.0
    dice: float = 5.0
    eos_coef: float = 0.1


class MTTRCriterion(torch.nn.Module):
    """Matching + losses for :class:`lvseg.models.mttr.MTTR` outputs.

    Per decoder layer (the last and, with ``aux_loss``, every auxiliary one, each matched on its own):

    * ``loss_is_referred``: cross-entropy of the two-way reference logits against ``[1, 0]`` for the query matched
      to the referred instance (on the frames where it is visible) and ``[0, 1]`` for every other query, weighted
      ``eos_coef`` except on the referred query, summed and divided by the number of (clip, frame) pairs;
    * ``loss_sigmoid_focal`` (mean over pixels) and ``loss_dice`` of every matched (query, instance) pair in every
      frame, mask logits upsampled (bilinear) to the target resolution; both summed and divided by ``num_masks``,
      the global number of instance-frames (see :meth:`count_masks`).

    ``forward(outputs, targets, num_masks)`` returns the weighted terms (``<name>`` and ``<name>_<i>`` for
    auxiliary layer ``i``) and ``loss``, their sum.
    """

    def __init__(
        self,
        weights: MTTRLossWeights | None = None,
        costs: MTTRMatchCosts | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        self.weights = weights or MTTRLossWeights()
        self.matcher = MTTRMatcher(costs)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss = aux_loss

    @staticmethod
    def count_masks(targets: Sequence[MTTRTarget]) -> float:
        """Instance-frames in this process's batch (instances x decoded frames, summed over clips), at least 1."""
        return float(max(sum(int(t.masks.shape[0]) * int(t.masks.shape[1]) for t in targets), 1))

    def layer_losses(
        self, outputs: dict[str, Any], targets: Sequence[MTTRTarget], num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one decoder layer's outputs."""
        logits, masks = outputs["pred_is_referred"], outputs["pred_masks"]
        matches = self.matcher(outputs, targets)
        b, t, q = logits.shape[:3]
        device = logits.device
        log_prob = logits.float().log_softmax(-1)  # [b, t, q, 2]
        reference = torch.zeros_like(log_prob)
        reference[..., 1] = 1.0  # "no object" unless matched to the visible referred instance
        weight = torch.full((b, t, q), self.weights.eos_coef, device=device)
        src_masks, tgt_masks = [], []
        for i, (target, (src, tgt)) in enumerate(zip(targets, matches)):
            ref_query = int(src[tgt == int(target.referred)])
            weight[i, :, ref_query] = 1.0
            reference[i, :, ref_query] = target.is_referred_targets(device)[:, int(target.referred)]
            size = tuple(target.masks.shape[-2:])
            for s, j in zip(src.tolist(), tgt.tolist()):
                src_masks.append(upsample_mask_logits(masks[i, :, s], size).flatten(1))  # [t, H W]
                tgt_masks.append(target.masks[j].to(device).float().flatten(1))
        ce = -(log_prob * reference).sum(-1) * weight  # [b, t, q]
        pm, tm = torch.cat(src_masks), torch.cat(tgt_masks)
        focal = sigmoid_focal_loss(pm, tm, self.focal_alpha, self.focal_gamma).mean(1)
        return {
            "loss_is_referred": ce.sum() / (b * t),
            "loss_sigmoid_focal": focal.sum() / num_masks,
            "loss_dice": dice_loss(pm, tm).sum() / num_masks,
        }

    def forward(
        self, outputs: dict[str, Any], targets: Sequence[MTTRTarget], num_masks: float | None = None
    ) -> dict[str, torch.Tensor]:
        if num_masks is None:
            num_masks = self.count_masks(targets)
        w = self.weights
        coef = {"loss_is_referred": w.is_referred, "loss_sigmoid_focal": w.sigmoid_focal, "loss_dice": w.dice}
        return _weighted_layers(self.layer_losses, outputs, targets, num_masks, coef, self.aux_loss)


class LAVTCriterion(torch.nn.Module):
    """LAVT's loss (LAVT-RIS ``train.py``): pixel-wise cross-entropy over the 2 classes with class weights
    (background 0.9, object 1.1), the weighted mean over supervised pixels.

    ``forward(outputs, targets, normaliser)``: ``outputs`` class logits [B, T, 2, H, W] at the input size;
    ``targets`` a one-element list holding int64 [B, T, H, W] labels (0 / 1, -100 = not supervised: padding,
    unannotated frames). ``normaliser`` is unused (the official loss is a mean over pixels).
    """

    def __init__(self, class_weights: tuple[float, float] = (0.9, 1.1)) -> None:
        super().__init__()
        self.class_weights: torch.Tensor
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)

    def forward(
        self, outputs: torch.Tensor, targets: list[torch.Tensor], normaliser: float = 1.0
    ) -> dict[str, torch.Tensor]:
        labels = targets[0]
        logits = outputs.flatten(0, 1).float()  # [B*T, 2, H, W]
        weights = self.class_weights.to(logits.device)
        loss = F.cross_entropy(logits, labels.flatten(0, 1), weight=weights, ignore_index=-100)
        return {"loss": loss, "loss_ce": loss.detach()}


@dataclass(frozen=True)
class VLPRVOSLossWeights:
    """VLP-RVOS loss coefficients: the released ``train.py`` arguments, each on the term its name says (which of
    them the unreleased model used is not known): on the final masks sigmoid focal ``mask`` 2, ``dice`` 5 and
    binary cross-entropy ``ce_mask`` 5; on the pixel-text similarity map focal ``mask_pixel_text`` 2, dice
    ``dice_pixel_text`` 5 and cross-entropy ``pixel_ce_mask`` 2. A weight of 0 drops its term."""

    mask: float = 2.0
    dice: float = 5.0
    ce_mask: float = 5.0
    mask_pixel_text: float = 2.0
    dice_pixel_text: float = 5.0
    pixel_ce_mask: float = 2.0


class VLPRVOSCriterion(torch.nn.Module):
    """VLP-RVOS's loss: one binary mask per frame, no matching.

    ``forward(outputs, targets, normaliser)``: ``outputs`` from :meth:`VLPRVOS.forward` (``pred_masks``
    [B, T, S, S], ``similarity`` [B, T, h, w]); ``targets`` a one-element list with a dict of ``masks`` bool
    [B, T, H, W], ``frames`` bool [B, T] (supervised frames: real and annotated) and ``ignore`` bool [B, T, H, W] or
    None (padding). The ground truth is resized to each output's grid like the frames (nearest for the masks at
    ``S``; area average > 0.5 at the similarity grid). Every term is a per-frame mean over pixels, summed over the
    supervised frames and divided by ``normaliser`` (their number in the global batch).
    """

    def __init__(self, weights: VLPRVOSLossWeights | None = None, focal_alpha: float = 0.25) -> None:
        super().__init__()
        self.weights = weights or VLPRVOSLossWeights()
        self.focal_alpha = focal_alpha

    @staticmethod
    def count_frames(targets: Sequence[dict[str, torch.Tensor]]) -> float:
        return float(targets[0]["frames"].sum())

    def _terms(
        self, logits: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor, normaliser: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(focal, dice, bce) summed over frames / normaliser: logits, masks, keep [F, P] (keep: pixel weight)."""
        pixels = keep.sum(1).clamp(min=1)
        focal = (sigmoid_focal_loss(logits, masks, self.focal_alpha) * keep).sum(1) / pixels
        bce = (F.binary_cross_entropy_with_logits(logits, masks, reduction="none") * keep).sum(1) / pixels
        dice = dice_loss(logits.masked_fill(keep == 0, -1e4), masks * keep)
        return focal.sum() / normaliser, dice.sum() / normaliser, bce.sum() / normaliser

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, Any]], normaliser: float = 1.0
    ) -> dict[str, torch.Tensor]:
        target = targets[0]
        frames = target["frames"]
        pred = outputs["pred_masks"].float()
        sim = outputs["similarity"].float()
        gt = target["masks"].float()
        ignore = target.get("ignore")
        keep = torch.ones_like(gt) if ignore is None else (~ignore.bool()).float()
        b, t = gt.shape[:2]

        def resized(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
            return F.interpolate(x.flatten(0, 1)[:, None], size=size, mode=mode)[:, 0].view(b, t, *size)

        size, grid = (int(pred.shape[-2]), int(pred.shape[-1])), (int(sim.shape[-2]), int(sim.shape[-1]))
        gt_full, keep_full = resized(gt, size, "nearest"), resized(keep, size, "nearest")
        gt_grid = (resized(gt, grid, "area") > 0.5).float()
        keep_grid = (resized(keep, grid, "area") > 0.5).float()
        w = self.weights
        focal, dice, bce = self._terms(
            pred[frames].flatten(1), gt_full[frames].flatten(1), keep_full[frames].flatten(1), normaliser
        )
        s_focal, s_dice, s_bce = self._terms(
            sim[frames].flatten(1), gt_grid[frames].flatten(1), keep_grid[frames].flatten(1), normaliser
        )
        parts = {
            "loss_mask": (focal, w.mask),
            "loss_dice": (dice, w.dice),
            "loss_ce_mask": (bce, w.ce_mask),
            "loss_mask_pixel_text": (s_focal, w.mask_pixel_text),
            "loss_dice_pixel_text": (s_dice, w.dice_pixel_text),
            "loss_pixel_ce_mask": (s_bce, w.pixel_ce_mask),
        }
        out = {name: value * coef for name, (value, coef) in parts.items()}
        out["loss"] = torch.stack(list(out.values())).sum()
        return out


def balanced_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, fore: float = 1.5, back: float = 0.5, smooth: float = 1e-4
) -> torch.Tensor:
    """Locater's ``BalancedBCEWithLogitsLoss`` (first commit d80056d, ``utils/losses.py``): the foreground and
    background terms averaged separately, weighted ``fore`` / ``back``; pixels with ``target`` -1 are ignored.

    logits, target: [N, H, W] (target 1 / 0 / -1)."""
    prob = torch.sigmoid(logits).clamp(smooth, 1.0 - smooth)
    pos = (target == 1).to(logits.dtype) * fore
    neg = (target == 0).to(logits.dtype) * back
    pos_loss = -(pos * torch.log(prob)).sum() / (pos.sum() + 1e-4)
    neg_loss = -(neg * F.logsigmoid(-logits)).sum() / (neg.sum() + 1e-4)
    return pos_loss + neg_loss


@dataclass(frozen=True)
class LocaterLossWeights:
    """Locater's loss coefficients (lvseg's choice; the official training code was never released): ``fore`` /
    ``back`` weigh the balanced BCE's foreground and background means, ``aux_weight`` the auxiliary decoders'
    terms, ``dice`` an optional dice term on the main and auxiliary logits (0: off, the default)."""

    aux_weight: float = 0.4
    fore: float = 1.5
    back: float = 0.5
    dice: float = 0.0


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over masks of ``1 - (2 |p g| + 1) / (|p| + |g| + 1)`` with pixels of ``target`` -1 left out.

    logits, target: [N, H, W] (target 1 / 0 / -1) -> scalar."""
    valid = (target >= 0).to(logits.dtype)
    prob = logits.sigmoid() * valid
    truth = target.clamp(min=0).to(logits.dtype) * valid
    numerator = 2 * (prob * truth).flatten(1).sum(-1) + 1
    denominator = prob.flatten(1).sum(-1) + truth.flatten(1).sum(-1) + 1
    return (1 - numerator / denominator).mean()


class LocaterCriterion(torch.nn.Module):
    """The Locater training loss lvseg uses (the official training code was never released): Locater's balanced
    BCE (:func:`balanced_bce_with_logits`, fore 1.5 / back 0.5) on the main decoder's logits of every frame, plus
    ``aux_weight`` times the same loss on each auxiliary decoder (one per fusion stage, the official
    ``aux_decoders``); with ``weights.dice`` > 0, that weight times a dice term (:func:`masked_dice_loss`) on the
    main logits plus ``aux_weight`` times it on each auxiliary decoder's. Which loss and which weights the authors
    used is not known (see docs/models/locater.md).

    ``forward(outputs, targets, normaliser)``: ``outputs`` the dict of :meth:`Locater.forward` (logits
    [B, T, S, S], aux_logits [B, T, K, S, S]); ``targets`` a one-element list holding float [B, T, H, W] masks
    (1 / 0, -1 = not supervised), resized here to S x S with nearest neighbours (as the official training
    ``Resize``). ``normaliser`` is unused.
    """

    def __init__(self, weights: LocaterLossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or LocaterLossWeights()

    def _term(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.weights
        bce = balanced_bce_with_logits(logits, target, w.fore, w.back)
        return bce, (masked_dice_loss(logits, target) if w.dice > 0 else None)

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: list[torch.Tensor], normaliser: float = 1.0
    ) -> dict[str, torch.Tensor]:
        w = self.weights
        logits = outputs["logits"].float()
        target = targets[0]
        if target.shape[-2:] != logits.shape[-2:]:
            target = F.interpolate(target.flatten(0, 1)[:, None].float(), size=logits.shape[-2:], mode="nearest")
            target = target[:, 0].unflatten(0, logits.shape[:2])
        target = target.flatten(0, 1)
        main, main_dice = self._term(logits.flatten(0, 1), target)
        aux_logits = outputs["aux_logits"].float()
        aux = torch.zeros((), device=logits.device)
        aux_dice = torch.zeros((), device=logits.device)
        for k in range(aux_logits.shape[2]):
            bce, dice = self._term(aux_logits[:, :, k].flatten(0, 1), target)
            aux = aux + bce
            if dice is not None:
                aux_dice = aux_dice + dice
        loss = main + w.aux_weight * aux
        out = {"loss_mask": main.detach(), "loss_aux": aux.detach()}
        if main_dice is not None:
            loss = loss + w.dice * (main_dice + w.aux_weight * aux_dice)
            out["loss_dice"] = main_dice.detach()
        return {"loss": loss, **out}

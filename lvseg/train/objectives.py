"""How each model family is trained: ground truth from a collated batch, the model's extra inputs, the criterion.

The :class:`~lvseg.train.engine.Trainer` is family-agnostic; it asks :func:`make_objective` for the family's
:class:`Objective` and, per batch, calls ``prepare`` (targets + keyword arguments of ``model.forward``), ``count``
(the local loss normaliser, summed over ranks by the trainer) and ``criterion``.

* ReferFormer: one target per clip, the union of the referred objects (:func:`build_targets`).
* MTTR: every annotated instance of the clip with the index of the referred one, decoded only on the frames that
  are annotated in every clip of the batch (the official ``valid_indices``; A2D-Sentences: the centre frame)
  (:func:`build_mttr_targets`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInputError
from .boxes import mask_boxes_cxcywh
from .losses import (
    LAVTCriterion,
    LocaterCriterion,
    LocaterLossWeights,
    LossWeights,
    MTTRCriterion,
    MTTRLossWeights,
    ReferFormerCriterion,
    VLPRVOSCriterion,
    VLPRVOSLossWeights,
)
from .matcher import MTTRTarget, VideoTarget

__all__ = [
    "Objective",
    "ReferFormerObjective",
    "MTTRObjective",
    "LAVTObjective",
    "VLPRVOSObjective",
    "LocaterObjective",
    "make_objective",
    "build_targets",
    "build_mttr_targets",
    "decoded_frames",
    "FAMILIES",
]


def _require_ground_truth(batch: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if key not in batch:
            raise InvalidInputError(
                f"training needs ground truth: the batch has no {key!r}. Use a training split "
                "(or a split with a ground-truth folder) for train_data"
            )


def _padding_mask(batch: dict[str, Any], device: torch.device) -> torch.Tensor | None:
    pad = batch.get("padding_mask")
    return pad.to(device) if pad is not None and bool(pad.any()) else None


def build_targets(batch: dict[str, Any], device: torch.device) -> list[VideoTarget]:
    """ReferFormer targets from a collated batch: the referred objects' union as one target per video.

    Needs ``masks`` bool [B, T, H, W] and ``size`` [B, 2] (unpadded H, W); ``frame_mask`` [B, T] marks real
    frames and ``annotated`` [B, T] (optional) annotated ones. Boxes and visibility are recomputed from the
    masks, so they stay exact whatever geometric augmentation ran before.
    """
    _require_ground_truth(batch, ("masks", "size"))
    masks = batch["masks"].bool()
    b, t = masks.shape[:2]
    frame_mask = batch.get("frame_mask", torch.ones((b, t), dtype=torch.bool))
    annotated = batch.get("annotated", torch.ones((b, t), dtype=torch.bool))
    size = batch["size"][:, None, :].expand(b, t, 2).reshape(b * t, 2)
    boxes, visible = mask_boxes_cxcywh(masks.flatten(0, 1), size)
    boxes, visible = boxes.view(b, t, 4), visible.view(b, t)
    out = []
    for i in range(b):
        valid = visible[i] & frame_mask[i] & annotated[i]
        out.append(
            VideoTarget(
                labels=torch.zeros(1, dtype=torch.int64, device=device),
                boxes=boxes[i][None].to(device),
                masks=masks[i][None].to(device),
                valid=valid[None].to(device),
                frames=(frame_mask[i] & annotated[i]).to(device),
            )
        )
    return out


def decoded_frames(batch: dict[str, Any]) -> list[int]:
    """The clip positions MTTR decodes and supervises: frames that are real and annotated in every clip of the
    batch (the official trainer keeps the time steps where no clip's target is missing)."""
    _require_ground_truth(batch, ("masks",))
    b, t = batch["masks"].shape[:2]
    frame_mask = batch.get("frame_mask", torch.ones((b, t), dtype=torch.bool))
    annotated = batch.get("annotated", torch.ones((b, t), dtype=torch.bool))
    keep = (frame_mask & annotated).all(0)
    if not bool(keep.any()):
        raise InvalidInputError(
            "no frame position is annotated in every clip of the batch: MTTR decodes only the "
            "frames annotated in all clips (A2D-Sentences: the centre frame). Use clips of one "
            "length with the annotated frame at the same position, or batch_size=1"
        )
    return [int(i) for i in keep.nonzero().flatten()]


def build_mttr_targets(
    batch: dict[str, Any], device: torch.device, frames: Sequence[int] | None = None
) -> list[MTTRTarget]:
    """MTTR targets from a collated batch, restricted to the clip positions ``frames`` (default:
    :func:`decoded_frames`).

    With ``referred_index`` in the batch (one int per clip), ``object_masks`` [N, T, H, W] are all the clip's
    instances and the referred one is ``object_masks[referred_index]`` (the official A2D-Sentences targets: every
    instance of the annotated frame). Without it, the referred mask ``masks`` [T, H, W] is the only instance. The
    referred instance is visible on the frames where its mask is not empty (Ref-YouTube-VOS's
    ``is_ref_inst_visible``).
    """
    index = list(decoded_frames(batch) if frames is None else frames)
    masks = batch["masks"].bool()
    referred_index = batch.get("referred_index")
    out = []
    for i in range(masks.shape[0]):
        if referred_index is not None:
            if "object_masks" not in batch:
                raise InvalidInputError("the batch has 'referred_index' but no 'object_masks' to index into")
            instances = batch["object_masks"][i].bool()[:, index]
            referred = int(referred_index[i])
        else:
            instances = masks[i][None, index]
            referred = 0
        instances = instances.to(device)
        visible = instances[referred].flatten(1).any(1)
        out.append(MTTRTarget(masks=instances, referred=referred, visible=visible))
    return out


class Objective(ABC):
    """A family's training objective: ``prepare(batch, device) -> (model kwargs, targets)``, ``count(targets)``
    (this process's loss normaliser) and ``criterion(outputs, targets, normaliser) -> dict of losses``."""

    family = ""

    def __init__(self, criterion: nn.Module) -> None:
        self.criterion = criterion

    @abstractmethod
    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], list[Any]]:
        """Targets of a collated batch and the keyword arguments of ``model.forward`` besides frames and text."""

    @abstractmethod
    def count(self, targets: Sequence[Any]) -> float:
        """This process's loss normaliser (target-frames); the trainer averages its sum over ranks."""

    def split(self, batch: dict[str, Any], model: nn.Module) -> list[dict[str, Any]]:
        """The batch as consecutive clips, one optimizer step each (``step_per_clip``); families that do not train
        clip by clip refuse."""
        raise ConfigError(
            f"step_per_clip is not supported for {self.family or type(self).__name__}: its model runs the whole "
            "sample in one forward; use step_per_clip=False"
        )

    def carry(self, outputs: Any) -> dict[str, Any]:
        """Model arguments that pass one clip's state to the next under ``step_per_clip`` (detached)."""
        return {}


class ReferFormerObjective(Objective):
    """Clip-level Hungarian matching with class/box/mask losses (:class:`ReferFormerCriterion`)."""

    family = "referformer"

    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], list[VideoTarget]]:
        return {"padding_mask": _padding_mask(batch, device)}, build_targets(batch, device)

    def count(self, targets: Sequence[VideoTarget]) -> float:
        return ReferFormerCriterion.count_boxes(targets)


class MTTRObjective(Objective):
    """Instance-sequence matching with reference + mask losses (:class:`MTTRCriterion`) on the frames annotated
    in every clip (passed to the model as ``valid_indices``)."""

    family = "mttr"

    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], list[MTTRTarget]]:
        index = decoded_frames(batch)
        kwargs: dict[str, Any] = {"padding_mask": _padding_mask(batch, device)}
        if len(index) < batch["masks"].shape[1]:
            kwargs["valid_indices"] = index
        return kwargs, build_mttr_targets(batch, device, index)

    def count(self, targets: Sequence[MTTRTarget]) -> float:
        return MTTRCriterion.count_masks(targets)


class LAVTObjective(Objective):
    """Pixel-wise weighted cross-entropy (:class:`LAVTCriterion`) on every annotated frame; padded pixels and
    frames without annotation are not supervised. The image models (``lavt``) run frame by frame, the video model
    (``lavt_video``) on the whole clip; an A2D-Sentences clip is supervised on its annotated frame alone, as
    LAVT-RS ``train_one_epoch_a2d`` selects ``output[valid_indices]``."""

    family = "lavt"

    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], list[torch.Tensor]]:
        _require_ground_truth(batch, ("masks",))
        masks = batch["masks"]
        b, t = masks.shape[:2]
        labels = masks.to(torch.int64)
        frame_mask = batch.get("frame_mask", torch.ones((b, t), dtype=torch.bool))
        annotated = batch.get("annotated", torch.ones((b, t), dtype=torch.bool))
        labels[~(frame_mask & annotated)] = -100
        pad = batch.get("padding_mask")
        if pad is not None:
            labels[pad.bool()] = -100
        return {}, [labels.to(device)]

    def count(self, targets: Sequence[torch.Tensor]) -> float:
        return float(targets[0].shape[0])


class VLPRVOSObjective(Objective):
    """One binary mask per frame, no matching (:class:`VLPRVOSCriterion`): focal + dice + cross-entropy on the
    masks and on the pixel-text similarity map, on every real annotated frame; padded pixels are not supervised.
    A sample of 2 x ``clip_frames`` frames is the released two-clip unroll (the model carries the prompt tokens)."""

    family = "vlp_rvos"

    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        _require_ground_truth(batch, ("masks",))
        masks = batch["masks"].bool()
        b, t = masks.shape[:2]
        frame_mask = batch.get("frame_mask", torch.ones((b, t), dtype=torch.bool))
        annotated = batch.get("annotated", torch.ones((b, t), dtype=torch.bool))
        pad = batch.get("padding_mask")
        target = {
            "masks": masks.to(device),
            "frames": (frame_mask & annotated).bool().to(device),
            "ignore": pad.bool().to(device) if pad is not None and bool(pad.any()) else None,
        }
        return {}, [target]

    def count(self, targets: Sequence[dict[str, Any]]) -> float:
        return VLPRVOSCriterion.count_frames(targets)

    # the per-frame entries of a collated batch: [B, T, ...]
    TIME_KEYS = ("frames", "masks", "frame_mask", "annotated", "padding_mask")

    def split(self, batch: dict[str, Any], model: nn.Module) -> list[dict[str, Any]]:
        """Consecutive clips of ``model.config.clip_frames`` frames (the released two-clip unroll: a sample of
        2 x ``clip_frames`` gives two), each with its frames' masks and flags."""
        total = int(batch["frames"].shape[1])
        clip = int(getattr(model, "config").clip_frames)  # noqa: B009 - VLPRVOS config
        pieces = []
        for start in range(0, total, clip):
            piece = dict(batch)
            for key in self.TIME_KEYS:
                value = batch.get(key)
                if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == total:
                    piece[key] = value[:, start : start + clip]
            pieces.append(piece)
        return pieces

    def carry(self, outputs: Any) -> dict[str, Any]:
        """The clip's prompt tokens, detached, as the next clip's ``video_prompt`` (the released engine.py)."""
        return {"video_prompt": outputs["prompt_token"].detach()}


class LocaterObjective(Objective):
    """Locater's balanced BCE on every annotated frame's main and auxiliary logits (:class:`LocaterCriterion`);
    the memory is unrolled over the clip inside ``Locater.forward``. Padded pixels and frames without annotation
    are not supervised (label -1)."""

    family = "locater"

    def prepare(self, batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], list[torch.Tensor]]:
        _require_ground_truth(batch, ("masks",))
        masks = batch["masks"]
        b, t = masks.shape[:2]
        labels = masks.to(torch.float32)
        frame_mask = batch.get("frame_mask", torch.ones((b, t), dtype=torch.bool))
        annotated = batch.get("annotated", torch.ones((b, t), dtype=torch.bool))
        labels[~(frame_mask & annotated)] = -1.0
        pad = batch.get("padding_mask")
        if pad is not None:
            labels[pad.bool()] = -1.0
        return {}, [labels.to(device)]

    def count(self, targets: Sequence[torch.Tensor]) -> float:
        return float(targets[0].shape[0])


FAMILIES = ("referformer", "mttr", "lavt", "lavt_video", "vlp_rvos", "locater")


def make_objective(
    family: str, loss_weights: Any = None, criterion: nn.Module | None = None, mask_stride: int = 4
) -> Objective:
    """The :class:`Objective` of ``family``; ``loss_weights`` (:class:`LossWeights` for ReferFormer,
    :class:`MTTRLossWeights` for MTTR, or None for the official ones) or a ready ``criterion``. ``mask_stride``:
    input pixels per predicted mask cell (ReferFormer's ``config.mask_stride``: 4, or 1 with ``mask_refine``);
    the ground truth is subsampled to that grid. A ``dict`` of weights (as :class:`~lvseg.train.TrainConfig` keeps
    keys that several families share) is read with ``family``'s class."""
    if isinstance(loss_weights, dict):
        kind = {
            "referformer": LossWeights,
            "mttr": MTTRLossWeights,
            "vlp_rvos": VLPRVOSLossWeights,
            "locater": LocaterLossWeights,
        }.get(family)
        if kind is None:
            raise ConfigError(f"the {family!r} family's loss has no weights to set, got loss_weights={loss_weights}")
        allowed = {f.name for f in dataclasses.fields(kind)}
        if not set(loss_weights) <= allowed:
            raise ConfigError(
                f"loss_weights {sorted(set(loss_weights) - allowed)} are not {family!r} loss weights; "
                f"{kind.__name__} has {sorted(allowed)}"
            )
        loss_weights = kind(**loss_weights)
    if family == "referformer":
        if loss_weights is not None and not isinstance(loss_weights, LossWeights):
            raise ConfigError(
                f"ReferFormer takes LossWeights (cls, bbox, giou, mask, dice), got {type(loss_weights).__name__}"
            )
        return ReferFormerObjective(criterion or ReferFormerCriterion(loss_weights, mask_stride=mask_stride))
    if family == "mttr":
        if loss_weights is not None and not isinstance(loss_weights, MTTRLossWeights):
            raise ConfigError(
                f"MTTR takes MTTRLossWeights (is_referred, sigmoid_focal, dice, eos_coef), got "
                f"{type(loss_weights).__name__}"
            )
        return MTTRObjective(criterion or MTTRCriterion(loss_weights))
    if family in ("lavt", "lavt_video"):
        if loss_weights is not None:
            raise ConfigError("LAVT's loss has no weights to set (class-weighted cross-entropy, as officially)")
        return LAVTObjective(criterion or LAVTCriterion())
    if family == "vlp_rvos":
        if loss_weights is not None and not isinstance(loss_weights, VLPRVOSLossWeights):
            raise ConfigError(
                "VLP-RVOS takes VLPRVOSLossWeights (mask, dice, ce_mask, mask_pixel_text, dice_pixel_text, "
                f"pixel_ce_mask), got {type(loss_weights).__name__}"
            )
        return VLPRVOSObjective(criterion or VLPRVOSCriterion(loss_weights))
    if family == "locater":
        if loss_weights is not None and not isinstance(loss_weights, LocaterLossWeights):
            raise ConfigError(
                f"Locater takes LocaterLossWeights (aux_weight, fore, back, dice), got {type(loss_weights).__name__}"
            )
        return LocaterObjective(criterion or LocaterCriterion(loss_weights))
    raise ConfigError(f"lvseg.train supports the {', '.join(repr(f) for f in FAMILIES)} families, not {family!r}")

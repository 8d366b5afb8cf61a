"""Mask IoU, overall / mean IoU and precision@K, with each benchmark's conventions selectable.

The referring-segmentation papers agree on the names but not on the arithmetic. :class:`IoUProtocol` captures the
differences, and :func:`iou_summary` reproduces each official computation operation for operation:

========== ===================================== ==================== ============ ===========================
protocol   source                                per-sample IoU       P@K          accumulation
========== ===================================== ==================== ============ ===========================
``mttr``   MTTR ``metrics.py`` (also ReferFormer  ``(I+1e-6)/(U+1e-6)`` ``iou > K``   float32 IoU, float64 sums
           and VLP-RVOS on A2D/JHMDB)            in float32: 0/0 -> 1
``lavt``   LAVT ``test.py`` (RefCOCO/+/g)         ``I/U``, 0/0 -> 0    ``iou >= K`` float64
``locater`` Locater ``tools/evaluate.py``         ``I/U``, 0/0 -> 1    ``iou >= K`` float32 running sums (GPU tensors)
========== ===================================== ==================== ============ ===========================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import InvalidInputError
from ._arrays import as_mask_array, check_same_shape

__all__ = [
    "IoUProtocol",
    "MTTR",
    "LAVT",
    "LOCATER",
    "PROTOCOLS",
    "intersection_union",
    "mask_iou",
    "sample_ious",
    "iou_summary",
    "precision_at_k",
    "overall_iou",
    "mean_iou",
]

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class IoUProtocol:
    """How a benchmark turns per-sample intersections and unions into numbers.

    Attributes:
        name: short name (``"mttr"``, ``"lavt"``, ``"locater"``).
        comparison: ``">"`` or ``">="`` for precision@K.
        empty_iou: the IoU of a sample whose union is empty (both masks empty).
        epsilon: added to I and U before dividing (MTTR's 1e-6); the empty case then follows from it.
        arithmetic: ``"mttr"`` (float32 per-sample IoU, float64 totals), ``"float64"`` or ``"float32_running"``
            (Locater: running float32 sums, as accumulated in GPU tensors).
        thresholds: the K of precision@K.
    """

    name: str
    comparison: Literal[">", ">="]
    empty_iou: float
    epsilon: float = 0.0
    arithmetic: Literal["mttr", "float64", "float32_running"] = "float64"
    thresholds: tuple[float, ...] = THRESHOLDS

    def passes(self, iou: np.ndarray, k: float) -> np.ndarray:
        return iou > k if self.comparison == ">" else iou >= k


MTTR = IoUProtocol("mttr", ">", empty_iou=1.0, epsilon=1e-6, arithmetic="mttr")
LAVT = IoUProtocol("lavt", ">=", empty_iou=0.0, arithmetic="float64")
LOCATER = IoUProtocol("locater", ">=", empty_iou=1.0, arithmetic="float32_running")
PROTOCOLS: dict[str, IoUProtocol] = {p.name: p for p in (MTTR, LAVT, LOCATER)}


def _protocol(protocol: IoUProtocol | str) -> IoUProtocol:
    if isinstance(protocol, IoUProtocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise InvalidInputError(f"unknown IoU protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}") from None


def intersection_union(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union pixel counts per sample.

    Args:
        pred, gt: masks [H, W] or [..., H, W] of the same shape (numpy or torch; nonzero is foreground).

    Returns:
        ``(I, U)``: int64 numpy arrays of shape [...] (0-d for a single mask).
    """
    p, _ = as_mask_array(pred, "pred")
    g, _ = as_mask_array(gt, "gt")
    check_same_shape(p, g, ("pred", "gt"))
    lead = p.shape[:-2]
    p = p.reshape(-1, p.shape[-2] * p.shape[-1])
    g = g.reshape(p.shape)
    i = np.count_nonzero(p & g, axis=1).astype(np.int64).reshape(lead)
    u = np.count_nonzero(p | g, axis=1).astype(np.int64).reshape(lead)
    return i, u


def sample_ious(intersection: Any, union: Any, protocol: IoUProtocol | str = "mttr") -> np.ndarray:
    """Per-sample IoU from intersections and unions [N] under a protocol (float64 array of the official values)."""
    proto = _protocol(protocol)
    i = np.asarray(intersection, dtype=np.float64).reshape(-1)
    u = np.asarray(union, dtype=np.float64).reshape(-1)
    if i.shape != u.shape:
        raise InvalidInputError(f"intersection and union must have the same length, got {i.shape} and {u.shape}")
    if np.any(i > u) or np.any(i < 0):
        raise InvalidInputError("every intersection must satisfy 0 <= I <= U")
    if proto.arithmetic == "mttr":
        # MTTR computes this in float32 torch tensors and reads it back with .item()
        iou32 = (torch.from_numpy(i).float() + proto.epsilon) / (torch.from_numpy(u).float() + proto.epsilon)
        return iou32.double().numpy()
    if proto.arithmetic == "float32_running":
        i32, u32 = i.astype(np.float32), u.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(u32 == 0, np.float32(proto.empty_iou), i32 / np.where(u32 == 0, 1, u32))
        return iou.astype(np.float32).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(u == 0, proto.empty_iou, (i + proto.epsilon) / np.where(u == 0, 1, u + proto.epsilon))


def mask_iou(pred: Any, gt: Any, protocol: IoUProtocol | str = "mttr") -> Any:
    """Per-sample mask IoU under a protocol: a float for [H, W] masks, else float64 numpy [...]."""
    i, u = intersection_union(pred, gt)
    iou = sample_ious(i, u, protocol).reshape(np.shape(i))
    return float(iou) if iou.ndim == 0 else iou


def iou_summary(
    intersection: Any, union: Any, protocol: IoUProtocol | str = "mttr", scale: float = 1.0
) -> dict[str, float]:
    """Overall IoU (ΣI/ΣU), mean IoU and precision@K of a list of samples, exactly as the protocol's source.

    Args:
        intersection, union: per-sample pixel counts [N], in evaluation order (the order matters for the float32
            running sums of Locater).
        scale: 100 for percentages. For the ``lavt`` protocol the scaling happens where LAVT's ``test.py`` does it
            (``cum_I * 100. / cum_U``), so the printed digits match; the others scale the official fraction.

    Returns:
        ``{"overall_iou", "mean_iou", "P@0.5", ..., "P@0.9"}`` as fractions in [0, 1] (float64 of the official
        value); for Locater also ``"mAP"``, its mean of the five precisions (printed as "mAP.5:.95").
    """
    proto = _protocol(protocol)
    i = np.asarray(intersection, dtype=np.float64).reshape(-1)
    u = np.asarray(union, dtype=np.float64).reshape(-1)
    if i.size == 0:
        raise InvalidInputError("no samples to summarise: the evaluation produced no (prediction, ground truth) pair")
    ious = sample_ious(i, u, proto)
    out: dict[str, float] = {}
    if proto.arithmetic == "float32_running":
        # Locater keeps cum_I, cum_U, the IoU sum and the hit counters in float32 tensors (sequential adds)
        cum_i = np.cumsum(i.astype(np.float32), dtype=np.float32)[-1]
        cum_u = np.cumsum(u.astype(np.float32), dtype=np.float32)[-1]
        iou_sum = np.cumsum(ious.astype(np.float32), dtype=np.float32)[-1]
        total = np.float32(i.size)
        # comparisons in float32, as a float32 tensor against a Python float in torch
        correct = np.array(
            [
                np.float32(np.count_nonzero(proto.passes(ious.astype(np.float32), np.float32(k))))
                for k in proto.thresholds
            ],
            dtype=np.float32,
        )
        out["overall_iou"] = float(np.float32(cum_i / cum_u)) * scale
        out["mean_iou"] = float(np.float32(iou_sum / total)) * scale
        for k, c in zip(proto.thresholds, correct):
            out[f"P@{k}"] = float(np.float32(c / total)) * scale
        out["mAP"] = float(np.mean(correct, dtype=np.float32)) / float(total) * scale
        return out
    n = ious.size
    counts = [np.count_nonzero(proto.passes(ious, k)) for k in proto.thresholds]
    if proto.arithmetic == "float64":  # LAVT: cum_I * 100. / cum_U, seg_correct * 100. / seg_total, mean * 100.
        out["overall_iou"] = float(i.sum() * scale / u.sum()) if u.sum() > 0 else 0.0
        out["mean_iou"] = float(np.mean(ious)) * scale
        for k, c in zip(proto.thresholds, counts):
            out[f"P@{k}"] = float(c * scale / n)
        return out
    out["overall_iou"] = (float(i.sum() / u.sum()) if u.sum() > 0 else 0.0) * scale
    out["mean_iou"] = float(np.mean(ious)) * scale
    for k, c in zip(proto.thresholds, counts):
        out[f"P@{k}"] = float(c / n) * scale
    return out


def precision_at_k(ious: Sequence[float] | np.ndarray, k: float, comparison: Literal[">", ">="] = ">") -> float:
    """Fraction of samples whose IoU passes threshold ``k`` (``>`` as MTTR, ``>=`` as LAVT and Locater)."""
    arr = np.asarray(ious, dtype=np.float64)
    if arr.size == 0:
        raise InvalidInputError("precision_at_k needs at least one IoU value")
    if comparison not in (">", ">="):
        raise InvalidInputError(f"comparison must be '>' or '>=', got {comparison!r}")
    hits = arr > k if comparison == ">" else arr >= k
    return float(np.count_nonzero(hits) / arr.size)


def overall_iou(intersection: Any, union: Any) -> float:
    """Overall (cumulative) IoU ΣI / ΣU over samples (0 when every union is empty)."""
    i = np.asarray(intersection, dtype=np.float64)
    u = np.asarray(union, dtype=np.float64)
    return float(i.sum() / u.sum()) if u.sum() > 0 else 0.0


def mean_iou(intersection: Any, union: Any, protocol: IoUProtocol | str = "mttr") -> float:
    """Mean of the per-sample IoUs under a protocol."""
    return float(np.mean(sample_ious(intersection, union, protocol)))

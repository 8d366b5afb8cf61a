"""Box conversions and (generalised) IoU for the training losses. Boxes are float [..., 4]."""

from __future__ import annotations

import torch

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_iou", "generalized_box_iou", "pixel_boxes_to_cxcywh"]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def pixel_boxes_to_cxcywh(boxes: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Inclusive pixel boxes (x1, y1, x2, y2) [..., 4] of frames ``size`` = (H, W) -> normalised (cx, cy, w, h).

    The last pixel is inclusive (as datasets store mask boxes), so a box covers ``x2 - x1 + 1`` pixels.
    """
    h, w = size[..., 0:1].to(boxes.dtype), size[..., 1:2].to(boxes.dtype)
    x1, y1, x2, y2 = boxes.unbind(-1)
    scale = torch.cat([w, h, w, h], -1)
    while scale.dim() < boxes.dim():
        scale = scale.unsqueeze(-2)
    xyxy = torch.stack([x1, y1, x2 + 1, y2 + 1], -1) / scale
    return box_xyxy_to_cxcywh(xyxy)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union of xyxy boxes a [N, 4] and b [M, 4] -> ([N, M], [N, M])."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-7), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes a [N, 4], b [M, 4] -> [N, M] in [-1, 1]."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=1e-7)


def mask_boxes_cxcywh(masks: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of bool masks [N, H, W] as normalised (cx, cy, w, h) [N, 4], and visibility bool [N].

    ``size`` [N, 2] is each mask's unpadded (H, W); empty masks get all-zero boxes.
    """
    _, h, w = masks.shape
    visible = masks.flatten(1).any(1)
    ys = torch.arange(h, dtype=torch.float32, device=masks.device)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)  # [N, H], [N, W]
    big = float(max(h, w) + 1)
    y1 = torch.where(rows, ys, big).amin(1)
    y2 = torch.where(rows, ys, -1.0).amax(1)
    x1 = torch.where(cols, xs, big).amin(1)
    x2 = torch.where(cols, xs, -1.0).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], -1)
    boxes = torch.where(visible[:, None], boxes, torch.zeros_like(boxes))
    out = pixel_boxes_to_cxcywh(boxes, size.to(masks.device))
    return torch.where(visible[:, None], out, torch.zeros_like(out)), visible

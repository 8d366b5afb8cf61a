"""DAVIS region similarity J and boundary F-measure, batched and exact.

These reproduce ``db_eval_iou``, ``db_eval_boundary``/``f_measure``, ``_seg2bmap`` and ``db_statistics`` of the
official DAVIS 2017 evaluation (davisvideochallenge/davis2017-evaluation @ac7c43f) value for value; the test suite
checks them against numbers produced by that code. What differs is how they are computed:

* every frame of a batch is processed at once (torch, CPU or GPU) instead of one frame at a time;
* no OpenCV or scikit-image: the dilation of a boundary map by the disk ``x² + y² <= r²`` is never materialised.
  F only needs to know, for each boundary pixel of one mask, whether a boundary pixel of the other mask lies in
  the disk around it. The disk is a union of a few axis-aligned rectangles (one per distinct half-width of its
  rows), and "is there a boundary pixel in this rectangle" is four lookups in an integral image. So the cost is
  one cumulative sum per frame plus a handful of gathers per boundary pixel, whatever the radius. All counts are
  integers, so the result is identical to dilating with ``cv2.dilate`` (zero border) and multiplying.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ._arrays import as_mask_tensor, check_same_shape, wrap_result

__all__ = [
    "region_similarity",
    "boundary_f",
    "boundary_map",
    "boundary_radius",
    "disk_rectangles",
    "db_statistics",
]

# Frames are processed in chunks of at most this many pixels, to bound the memory of the integral images.
_CHUNK_PIXELS = 1 << 23


def _prepare(
    pred: Any, gt: Any, void: Any | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool, tuple[int, ...]]:
    p, p_np = as_mask_tensor(pred, "pred")
    g, g_np = as_mask_tensor(gt, "gt")
    check_same_shape(p, g, ("pred", "gt"))
    if g.device != p.device:
        g = g.to(p.device)
    v = None
    if void is not None:
        v, _ = as_mask_tensor(void, "void")
        v = v.to(p.device)
        try:
            v = torch.broadcast_to(v, p.shape)
        except RuntimeError as exc:
            raise InvalidInputError(
                f"void of shape {tuple(v.shape)} does not broadcast to the masks' shape {tuple(p.shape)}"
            ) from exc
    lead = tuple(p.shape[:-2])
    return p, g, v, (p_np or g_np), lead


def region_similarity(pred: Any, gt: Any, void: Any | None = None) -> Any:
    """DAVIS region similarity J (Jaccard index) per frame.

    Args:
        pred: predicted masks, [H, W] or [..., H, W] (numpy or torch, any dtype: nonzero is foreground).
        gt: ground-truth masks of the same shape.
        void: optional pixels to ignore (DAVIS value 255), broadcastable to the masks' shape.

    Returns:
        J per frame: a float for [H, W] input, else float64 [...] (numpy if an input was numpy, else torch).
        Where the union is empty (both masks empty outside void) J = 1, as in the official ``db_eval_iou``.
    """
    p, g, v, as_np, lead = _prepare(pred, gt, void)
    inter = p & g
    union = p | g
    if v is not None:
        keep = ~v
        inter &= keep
        union &= keep
    i = inter.flatten(-2).sum(-1, dtype=torch.int64)
    u = union.flatten(-2).sum(-1, dtype=torch.int64)
    j = torch.where(u == 0, torch.ones((), dtype=torch.float64, device=u.device),
                    i.double() / u.clamp(min=1).double())
    return wrap_result(j.reshape(lead), as_np)


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Dilation radius in pixels: ``bound_th`` itself if >= 1, else ``ceil(bound_th * ||(H, W)||)``.

    8 for 480x854, 7 for 480x640, 12 for 720x1280 (the official ``f_measure`` rule).
    """
    if not (isinstance(bound_th, (int, float)) and math.isfinite(bound_th) and bound_th >= 0):
        raise InvalidInputError(f"bound_th must be a finite number >= 0, got {bound_th!r}")
    if bound_th >= 1:
        if float(bound_th) != int(bound_th):
            raise InvalidInputError(
                f"bound_th={bound_th} is read as a radius in pixels (>= 1) and must then be a whole number; "
                "pass e.g. 3, or a fraction of the image diagonal below 1 such as 0.008"
            )
        return int(bound_th)
    # np.linalg.norm, as the official code, so the rounding at exact integers is the same
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


@lru_cache(maxsize=64)
def disk_rectangles(radius: int) -> tuple[tuple[int, int], ...]:
    """The disk ``{(dy, dx): dy² + dx² <= radius²}`` as a union of centred rectangles ``(half_h, half_w)``.

    Row ``dy`` of the disk spans ``|dx| <= w(dy) = isqrt(r² - dy²)``, non-increasing in ``|dy|``; grouping rows of
    equal half-width gives one rectangle per distinct width (6 rectangles for r = 8). This is the footprint of
    ``skimage.morphology.disk(radius)``.
    """
    rects: dict[int, int] = {}
    for dy in range(radius + 1):
        w = math.isqrt(radius * radius - dy * dy)
        rects[w] = dy  # the largest dy with this half-width
    return tuple((h, w) for w, h in sorted(rects.items(), reverse=True))


def boundary_map(mask: Any) -> Any:
    """One-pixel boundaries of binary masks, as the official ``_seg2bmap`` defines them.

    A pixel is a boundary pixel when it differs from its right, lower or lower-right neighbour (so boundaries sit
    half a pixel towards the origin); the last row compares only with the right neighbour, the last column only
    with the lower one, and the bottom-right pixel is never a boundary.

    Args:
        mask: [H, W] or [..., H, W] masks (nonzero = foreground).

    Returns:
        bool boundary maps of the same shape (numpy for numpy input, torch for torch input).
    """
    t, was_np = as_mask_tensor(mask, "mask")
    b = _seg2bmap(t)
    return b.cpu().numpy() if was_np else b


def _seg2bmap(seg: torch.Tensor) -> torch.Tensor:
    """[..., H, W] bool -> [..., H, W] bool boundaries (see :func:`boundary_map`)."""
    b = torch.zeros_like(seg)
    x = seg[..., :-1, :-1]
    b[..., :-1, :-1] = (x ^ seg[..., :-1, 1:]) | (x ^ seg[..., 1:, :-1]) | (x ^ seg[..., 1:, 1:])
    b[..., -1, :-1] = seg[..., -1, :-1] ^ seg[..., -1, 1:]
    b[..., :-1, -1] = seg[..., :-1, -1] ^ seg[..., 1:, -1]
    return b


def _count_near(src: torch.Tensor, dst: torch.Tensor, rects: Sequence[tuple[int, int]]) -> torch.Tensor:
    """For [N, H, W] bool boundary maps: per frame, how many ``src`` pixels have a ``dst`` pixel in the disk.

    Equals ``sum(src * dilate(dst, disk))`` with a zero border, computed from an integral image of ``dst``.
    """
    n_frames, height, width = src.shape
    n, y, x = src.nonzero(as_tuple=True)
    counts = torch.zeros(n_frames, dtype=torch.int64, device=src.device)
    if n.numel() == 0:
        return counts
    # integral[f, i, j] = number of dst pixels in rows < i and columns < j; int32 is exact (H*W < 2**31)
    integral = torch.zeros((n_frames, height + 1, width + 1), dtype=torch.int32, device=src.device)
    integral[:, 1:, 1:] = dst.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    flat = integral.view(-1)
    row = width + 1
    base = n * ((height + 1) * row)
    hit = torch.zeros(n.shape, dtype=torch.bool, device=src.device)
    for half_h, half_w in rects:
        y0 = (y - half_h).clamp_(min=0) * row
        y1 = (y + half_h + 1).clamp_(max=height) * row
        x0 = (x - half_w).clamp_(min=0)
        x1 = (x + half_w + 1).clamp_(max=width)
        inside = flat[base + y1 + x1] - flat[base + y0 + x1] - flat[base + y1 + x0] + flat[base + y0 + x0]
        hit |= inside > 0
    return torch.bincount(n[hit], minlength=n_frames)


def boundary_f(pred: Any, gt: Any, bound_th: float = 0.008, void: Any | None = None) -> Any:
    """DAVIS boundary F-measure per frame (the official ``db_eval_boundary``).

    Args:
        pred: predicted masks, [H, W] or [..., H, W] (numpy or torch; nonzero is foreground).
        gt: ground-truth masks of the same shape.
        bound_th: boundary tolerance; below 1 a fraction of the image diagonal (``ceil(bound_th * ||(H, W)||)``
            pixels), otherwise a whole number of pixels.
        void: optional pixels to ignore, broadcastable to the masks' shape. As in the official code, void pixels
            are removed from both masks before their boundaries are taken.

    Returns:
        F per frame: a float for [H, W] input, else float64 [...] (numpy if an input was numpy, else torch).
        Both boundaries empty gives F = 1; exactly one empty gives F = 0.
    """
    p, g, v, as_np, lead = _prepare(pred, gt, void)
    height, width = p.shape[-2:]
    rects = disk_rectangles(boundary_radius(height, width, bound_th))
    if v is not None:
        keep = ~v
        p = p & keep
        g = g & keep
    p = p.reshape(-1, height, width)
    g = g.reshape(-1, height, width)
    n_total = p.shape[0]
    stats = torch.zeros((4, n_total), dtype=torch.int64, device=p.device)
    chunk = max(1, _CHUNK_PIXELS // (height * width))
    for start in range(0, n_total, chunk):
        sl = slice(start, start + chunk)
        fg_b = _seg2bmap(p[sl])
        gt_b = _seg2bmap(g[sl])
        stats[0, sl] = fg_b.flatten(1).sum(1)
        stats[1, sl] = gt_b.flatten(1).sum(1)
        stats[2, sl] = _count_near(fg_b, gt_b, rects)  # fg boundary pixels matched by the dilated gt boundary
        stats[3, sl] = _count_near(gt_b, fg_b, rects)  # gt boundary pixels matched by the dilated fg boundary
    f = _f_from_counts(*stats)
    return wrap_result(f.reshape(lead), as_np)


def _f_from_counts(n_fg: torch.Tensor, n_gt: torch.Tensor, fg_match: torch.Tensor, gt_match: torch.Tensor) -> torch.Tensor:
    """Precision, recall and F in float64, in the same operation order as the official ``f_measure``.

    n_fg == 0 gives precision 1 (recall 0 unless n_gt == 0 too); n_gt == 0 gives recall 1 (and precision 0 since
    nothing can match), which covers the official case table.
    """
    one = torch.ones((), dtype=torch.float64, device=n_fg.device)
    precision = torch.where(n_fg == 0, one, fg_match.double() / n_fg.clamp(min=1).double())
    recall = torch.where(n_gt == 0, one, gt_match.double() / n_gt.clamp(min=1).double())
    denom = precision + recall
    f = 2 * precision * recall / torch.where(denom == 0, one, denom)
    return torch.where(denom == 0, torch.zeros_like(f), f)


def db_statistics(values: Any, decay_uint8_overflow: bool = True) -> tuple[float, float, float]:
    """Mean, recall and decay of a per-frame metric, as the official ``utils.db_statistics``.

    * mean ``M = nanmean(v)``; recall ``R = mean(v > 0.5)`` (NaN counts as a miss);
    * decay ``D``: the frames are cut into 4 bins at ``round(linspace(1, N, 5) + 1e-10) - 1`` and
      ``D = nanmean(first bin) - nanmean(last bin)`` (bins share their edge frames).

    The official code casts the bin edges to ``uint8``, so for sequences longer than 256 frames the edges wrap
    around and the decay is wrong (often NaN). ``decay_uint8_overflow=True`` (the default) keeps that quirk so the
    numbers match the official tables; pass False for the intended definition. M and R are unaffected.

    Args:
        values: per-frame values [N] (NaN allowed).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise InvalidInputError(f"db_statistics needs a non-empty 1-D array of per-frame values, got shape {v.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(v)
        recall = np.nanmean(v > 0.5)
        edges = np.round(np.linspace(1, len(v), 5) + 1e-10) - 1
        if decay_uint8_overflow:
            ids = [int(e) for e in edges.astype(np.int64) % 256]  # what astype(np.uint8) does to 0 <= e < 2**63

            def stop(i: int) -> int:
                return (ids[i] + 1) % 256  # uint8 + 1 wraps too
        else:
            ids = [int(e) for e in edges]

            def stop(i: int) -> int:
                return ids[i] + 1

        first = v[ids[0]:stop(1)]
        last = v[ids[3]:stop(4)]
        decay = np.nanmean(first) - np.nanmean(last)
    return float(mean), float(recall), float(decay)

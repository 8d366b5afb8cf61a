"""DAVIS region similarity J and boundary F-measure, batched and exact.

These reproduce ``db_eval_iou``, ``db_eval_boundary``/``f_measure``, ``_seg2bmap`` and ``db_statistics`` of the
official DAVIS 2017 evaluation (davisvideochallenge/davis2017-evaluation @ac7c43f) value for value; the test suite
checks them against numbers produced by that code. What differs is how they are computed:

* the frames of a batch are processed together (vectorised NumPy over chunks of frames), each chunk cropped to the
  window that holds its foreground, instead of one full frame at a time;
* no OpenCV or scikit-image: the dilation of a boundary map by the disk ``x² + y² <= r²`` is never materialised.
  F only needs to know, for each boundary pixel of one mask, whether a boundary pixel of the other mask lies in
  the disk around it. Row ``dy`` of the disk is a segment ``[x - w, x + w]``, and "is there a boundary pixel in
  this segment" is two binary searches in the sorted flat indices of the other boundary. So beyond a few passes
  over the masks, the cost depends only on the number of boundary pixels. All counts are integers, so the result
  is identical to dilating with ``cv2.dilate`` (zero border) and multiplying.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ._arrays import as_mask_array, check_same_shape, wrap_result

__all__ = [
    "region_similarity",
    "boundary_f",
    "boundary_map",
    "boundary_radius",
    "disk_half_widths",
    "region_and_boundary",
    "db_statistics",
]

# Frames are processed in chunks of at most this many frames / pixels (bounds the memory of the integral images)
_CHUNK_FRAMES = 4
_CHUNK_PIXELS = 1 << 23


def _prepare(
    pred: Any, gt: Any, void: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, torch.device | None, tuple[int, ...]]:
    """Masks as bool numpy [N, H, W] (void broadcast to the same), the output device and the leading shape."""
    p, p_dev = as_mask_array(pred, "pred")
    g, g_dev = as_mask_array(gt, "gt")
    check_same_shape(p, g, ("pred", "gt"))
    v = None
    if void is not None:
        v, _ = as_mask_array(void, "void")
        try:
            v = np.broadcast_to(v, p.shape)
        except ValueError as exc:
            raise InvalidInputError(
                f"void of shape {tuple(v.shape)} does not broadcast to the masks' shape {tuple(p.shape)}"
            ) from exc
    lead = tuple(p.shape[:-2])
    height, width = p.shape[-2:]
    p = p.reshape(-1, height, width)
    g = g.reshape(-1, height, width)
    if v is not None:
        v = v.reshape(-1, height, width)
    return p, g, v, (p_dev if p_dev is not None else g_dev), lead


def _crop(p: np.ndarray, g: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest window that holds every foreground pixel of ``p`` and ``g`` [n, H, W] plus one background
    pixel above/left and below/right (clipped to the image), or None when both are empty.

    Inside this window the boundaries, their matches and the pixel counts equal those of the whole frame: a
    boundary pixel is at most one pixel above/left of the foreground (``_seg2bmap`` looks right and down), the
    extra row/column below/right is background on both masks so the window's own last row/column rule gives no
    boundary there, and dilation windows clipped to it contain the same boundary pixels as clipped to the image.
    """
    rows = np.flatnonzero(p.any(axis=2).any(axis=0) | g.any(axis=2).any(axis=0))
    if rows.size == 0:
        return None
    band = slice(int(rows[0]), int(rows[-1]) + 1)
    cols = np.flatnonzero(p[:, band].any(axis=1).any(axis=0) | g[:, band].any(axis=1).any(axis=0))
    height, width = p.shape[-2:]
    return (slice(max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)),
            slice(max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, width)))


def _count(x: np.ndarray) -> np.ndarray:
    """Foreground pixels per frame of bool [n, h, w] -> int64 [n] (per-frame ``count_nonzero`` without ``axis``
    takes NumPy's fast path)."""
    return np.array([np.count_nonzero(frame) for frame in x], dtype=np.int64)


def _scan(p: np.ndarray, g: np.ndarray, v: np.ndarray | None, radius: int | None,
          need_j: bool = True) -> dict[str, np.ndarray]:
    """Pixel counts of bool [N, H, W] masks, frame chunk by frame chunk, each cropped with :func:`_crop`.

    Returns int64 [N] arrays: ``inter``/``union`` (J, void excluded) and, when ``radius`` is given, ``n_fg``/``n_gt``
    (boundary pixels) and ``fg_match``/``gt_match`` (boundary pixels within the disk of the other boundary).
    """
    n_total, height, width = p.shape
    keys = (["inter", "union"] if need_j else []) + (["n_fg", "n_gt", "fg_match", "gt_match"] if radius is not None
                                                      else [])
    out = {k: np.zeros(n_total, dtype=np.int64) for k in keys}
    half_widths = disk_half_widths(radius) if radius is not None else ()
    chunk = max(1, min(_CHUNK_FRAMES, _CHUNK_PIXELS // (height * width)))
    for start in range(0, n_total, chunk):
        sl = slice(start, start + chunk)
        window = _crop(p[sl], g[sl])
        if window is None:  # both masks empty in every frame of the chunk: nothing to count
            continue
        pc, gc = p[sl][:, window[0], window[1]], g[sl][:, window[0], window[1]]
        if v is not None:
            keep = ~v[sl][:, window[0], window[1]]
            pc, gc = pc & keep, gc & keep
        if need_j:
            inter = _count(pc & gc)
            out["inter"][sl] = inter
            out["union"][sl] = _count(pc) + _count(gc) - inter
        if radius is not None:
            fg_b, gt_b = _boundary_indices(pc), _boundary_indices(gc)
            frame_pixels = pc.shape[1] * pc.shape[2]
            out["n_fg"][sl] = np.bincount(fg_b[0] // frame_pixels, minlength=pc.shape[0])
            out["n_gt"][sl] = np.bincount(gt_b[0] // frame_pixels, minlength=pc.shape[0])
            out["fg_match"][sl] = _count_near(fg_b, gt_b, half_widths)  # fg boundary within the dilated gt one
            out["gt_match"][sl] = _count_near(gt_b, fg_b, half_widths)  # gt boundary within the dilated fg one
    return out


def _j_from_counts(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union  # float64, as the official inters / union
    j[union == 0] = 1.0
    return j


def region_similarity(pred: Any, gt: Any, void: Any | None = None) -> Any:
    """DAVIS region similarity J (Jaccard index) per frame.

    Args:
        pred: predicted masks, [H, W] or [..., H, W] (numpy or torch, any dtype: nonzero is foreground).
        gt: ground-truth masks of the same shape.
        void: optional pixels to ignore (DAVIS value 255), broadcastable to the masks' shape.

    Returns:
        J per frame: a float for [H, W] input, else float64 [...] (numpy for numpy input; a torch tensor on the
        input's device for torch input). Where the union is empty (both masks empty outside void) J = 1, as in the
        official ``db_eval_iou``.
    """
    p, g, v, device, lead = _prepare(pred, gt, void)
    counts = _scan(p, g, v, None)
    return wrap_result(_j_from_counts(counts["inter"], counts["union"]).reshape(lead), device)


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
def disk_half_widths(radius: int) -> tuple[int, ...]:
    """Half-width of each row of the disk ``{(dy, dx): dy² + dx² <= radius²}``: ``w[|dy|] = isqrt(r² - dy²)``.

    Row ``dy`` of the disk spans ``|dx| <= w[|dy|]``. This is the footprint of ``skimage.morphology.disk(radius)``
    that the official code dilates with.
    """
    return tuple(math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1))


def boundary_map(mask: Any) -> Any:
    """One-pixel boundaries of binary masks, as the official ``_seg2bmap`` defines them.

    A pixel is a boundary pixel when it differs from its right, lower or lower-right neighbour (so boundaries sit
    half a pixel towards the origin); the last row compares only with the right neighbour, the last column only
    with the lower one, and the bottom-right pixel is never a boundary.

    Args:
        mask: [H, W] or [..., H, W] masks (nonzero = foreground).

    Returns:
        bool boundary maps of the same shape (numpy for numpy input, torch on the input's device for torch input).
    """
    m, device = as_mask_array(mask, "mask")
    b = _seg2bmap(m)
    return b if device is None else torch.from_numpy(b).to(device)


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """[..., H, W] bool -> [..., H, W] bool boundaries (see :func:`boundary_map`).

    With ``h = seg[:, :-1] ^ seg[:, 1:]`` (differs from the right neighbour) and ``v = seg[:-1] ^ seg[1:]`` (from
    the lower one), differing from the lower-right neighbour is ``v[y, x] ^ h[y + 1, x]``, so the official
    ``seg^e | seg^s | seg^se`` is ``h[y] | v[y] | h[y + 1]`` inside the image: four passes instead of six.
    """
    b = np.zeros_like(seg)
    h = seg[..., :, :-1] ^ seg[..., :, 1:]  # [..., H, W-1]
    v = seg[..., :-1, :] ^ seg[..., 1:, :]  # [..., H-1, W]
    inner = b[..., :-1, :-1]
    np.bitwise_or(h[..., :-1, :], v[..., :, :-1], out=inner)
    inner |= h[..., 1:, :]
    b[..., -1, :-1] = h[..., -1, :]  # last row: right neighbour only
    b[..., :-1, -1] = v[..., :, -1]  # last column: lower neighbour only
    return b


def _count_near(src: np.ndarray, dst: np.ndarray, half_widths: Sequence[int]) -> np.ndarray:
    """For sorted flat indices of ``src`` and ``dst`` boundary pixels in [n, h, w] frames: per frame, how many
    ``src`` pixels have a ``dst`` pixel in the disk around them.

    Equals ``sum(src * dilate(dst, disk))`` with a zero border, without dilating anything: for every row ``dy`` of
    the disk, a ``src`` pixel at ``(k, y, x)`` looks for a ``dst`` index in ``[(k, y + dy, x - w), (k, y + dy, x + w)]``
    with two binary searches in the sorted ``dst`` indices (row-major order keeps each row segment contiguous).
    Matched pixels stop searching, rows are visited from the centre out (most pixels need one or two rows), and a
    coarse block map of ``dst`` settles pixels with no ``dst`` pixel anywhere near before any search.

    Args:
        src, dst: ``(flat_indices int64 [K] sorted, (n, h, w))`` as returned by :func:`_boundary_indices`.
    """
    src_idx, (n_frames, height, width) = src
    dst_idx = dst[0]
    if src_idx.size == 0 or dst_idx.size == 0:
        return np.zeros(n_frames, dtype=np.int64)
    frame_rows = src_idx // width  # k * h + y
    y = frame_rows % height
    x = src_idx % width
    radius = len(half_widths) - 1
    # coarse pre-filter: blocks of (2r + 1)² pixels that hold a dst pixel; a src pixel whose neighbourhood
    # (at most 2 x 2 blocks) holds none cannot match, which settles isolated boundary pixels at once
    block = 2 * radius + 1
    grid_h, grid_w = -(-height // block), -(-width // block)
    dst_rows = dst_idx // width
    occupied = np.zeros((n_frames, grid_h + 1, grid_w + 1), dtype=bool)  # +1: a zero border for the lookups
    occupied[dst_rows // height, (dst_rows % height) // block, (dst_idx % width) // block] = True
    frame = frame_rows // height
    by0, by1 = np.maximum(y - radius, 0) // block, (y + radius) // block
    bx0, bx1 = np.maximum(x - radius, 0) // block, (x + radius) // block
    near = occupied[frame, by0, bx0] | occupied[frame, by0, bx1] | occupied[frame, by1, bx0] | occupied[frame, by1, bx1]
    todo = np.flatnonzero(near)  # the src pixels not settled yet
    matched = np.zeros(src_idx.size, dtype=bool)
    for dy in sorted(range(-radius, radius + 1), key=abs):
        if todo.size == 0:
            break
        cand = todo[(y[todo] + dy >= 0) & (y[todo] + dy < height)]
        half = half_widths[abs(dy)]
        xs = x[cand]
        row_start = (frame_rows[cand] + dy) * width
        lo = np.searchsorted(dst_idx, row_start + np.maximum(xs - half, 0), side="left")
        hi = np.searchsorted(dst_idx, row_start + np.minimum(xs + half, width - 1), side="right")
        matched[cand[hi > lo]] = True
        todo = todo[~matched[todo]]
    return np.bincount(frame_rows[matched] // height, minlength=n_frames).astype(np.int64)


def _boundary_indices(seg: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Sorted flat indices of the boundary pixels of bool [n, h, w] masks, and the shape."""
    return np.flatnonzero(_seg2bmap(seg)), seg.shape  # type: ignore[return-value]


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
        F per frame: a float for [H, W] input, else float64 [...] (numpy for numpy input; a torch tensor on the
        input's device for torch input). Both boundaries empty gives F = 1; exactly one empty gives F = 0.
    """
    p, g, v, device, lead = _prepare(pred, gt, void)
    radius = boundary_radius(p.shape[-2], p.shape[-1], bound_th)
    c = _scan(p, g, v, radius, need_j=False)
    return wrap_result(_f_from_counts(c["n_fg"], c["n_gt"], c["fg_match"], c["gt_match"]).reshape(lead), device)


def region_and_boundary(pred: Any, gt: Any, bound_th: float = 0.008, void: Any | None = None) -> tuple[Any, Any]:
    """``(region_similarity(...), boundary_f(...))`` in one pass over the masks (what the evaluators use)."""
    p, g, v, device, lead = _prepare(pred, gt, void)
    radius = boundary_radius(p.shape[-2], p.shape[-1], bound_th)
    c = _scan(p, g, v, radius)
    j = _j_from_counts(c["inter"], c["union"]).reshape(lead)
    f = _f_from_counts(c["n_fg"], c["n_gt"], c["fg_match"], c["gt_match"]).reshape(lead)
    return wrap_result(j, device), wrap_result(f, device)


def _f_from_counts(n_fg: np.ndarray, n_gt: np.ndarray, fg_match: np.ndarray, gt_match: np.ndarray) -> np.ndarray:
    """Precision, recall and F in float64, in the same operation order as the official ``f_measure``.

    n_fg == 0 gives precision 1 (recall 0 unless n_gt == 0 too); n_gt == 0 gives recall 1 (and precision 0 since
    nothing can match), which covers the official case table.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_fg == 0, 1.0, fg_match / np.maximum(n_fg, 1))
        recall = np.where(n_gt == 0, 1.0, gt_match / np.maximum(n_gt, 1))
        denom = precision + recall
        f = 2 * precision * recall / np.where(denom == 0, 1.0, denom)
    return np.where(denom == 0, 0.0, f)


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

"""DAVIS region similarity J and boundary F-measure, batched and exact.

These reproduce ``db_eval_iou``, ``db_eval_boundary``/``f_measure``, ``_seg2bmap`` and ``db_statistics`` of the
official DAVIS 2017 evaluation (davisvideochallenge/davis2017-evaluation @ac7c43f) value for value; the test suite
checks them against numbers produced by that code. What differs is how they are computed:

* the masks are bit-packed (8 pixels a byte) a chunk of frames at a time and cropped to the rows and bytes that
  hold foreground; pixel counts are popcounts and the ``_seg2bmap`` boundary is a few shifts and XORs of the packed
  buffer, so every pass touches 8 times less memory than one over the bool masks;
* no OpenCV or scikit-image: the dilation of a boundary map by the disk ``x² + y² <= r²`` is never materialised.
  F only needs to know, for each boundary pixel of one mask, whether a boundary pixel of the other mask lies in
  the disk around it. Row ``dy`` of the disk is a segment ``[x - w, x + w]``; the packed bits of the other
  boundary's row ``y + dy`` from ``x - r`` on are read with one 64-bit load and a shift (per 32 bits of window)
  and masked with that segment. Rows are tried from the centre out and a matched pixel stops, and a coarse map of
  8 x 8 cells drops boundary pixels with nothing within reach before any row is read. So beyond one packing pass
  over the masks, the cost depends on the number of boundary pixels. All counts are integers, so the result is
  identical to dilating with ``cv2.dilate`` (zero border) and multiplying.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any

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

# Frames are processed in chunks of at most this many pixels: the bit-packed buffers of a chunk (1/8 byte per
# pixel) then stay within the CPU caches
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


# ------------------------------------------------------------------------------------------ bit-packed masks
#
# A mask row of W pixels is packed into ceil(W / 8) bytes, little bit order: pixel x is bit x % 8 of byte x // 8.
# Every pass over a packed chunk touches 8 times less memory than over the bool masks, and the per-frame buffers
# are padded to a multiple of 8 rows so that a frame is a whole number of uint64 words.

_WORD = np.dtype("<u8")  # little-endian words: bit i of a word is pixel i of its 64 (on any machine)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_BYTE_BITS = np.array([[(i >> bit) & 1 for bit in range(8)] for i in range(256)], dtype=bool)  # [256, 8]


def _pack(x: np.ndarray) -> np.ndarray:
    """bool [n, h, w] -> uint8 [n, h, ceil(w / 8)], little bit order (the padding bits of the last byte are 0)."""
    return np.packbits(x, axis=-1, bitorder="little")


class _Layout:
    """Where the packed rows of a chunk of ``n`` cropped frames (``height`` rows of ``data_bytes`` bytes) live in one
    zero-padded uint8 buffer [rows, row_bytes], so that every step below is a pass over one flat array:

    * ``top`` zero rows, then one slot of ``slot`` rows per frame: the frame's rows, then at least ``radius`` zero
      rows (a disk never reaches from one frame into the next) -- ``top`` and ``slot`` are multiples of 8, so the
      8 x 8 cells of :func:`_near_cells` and the uint64 words of a frame never straddle two frames;
    * each row: ``left`` zero bytes (``8 * left - radius >= 32`` bits: a window that starts ``radius`` bits before
      the row's first pixel still starts in the row's own padding, and one that ends ``radius`` bits after its last
      pixel ends in the next row's padding), the data bytes, then at least one zero byte up to a multiple of 8
      (shifting the flat buffer by one bit never moves a pixel into the previous row);
    * one spare zero row at the end, for the 64-bit loads of the last windows.

    A pixel's position is then a single bit index into the flat buffer, and the pixel ``dy`` rows below it is
    ``dy * 8 * row_bytes`` bits further.
    """

    def __init__(self, n: int, height: int, data_bytes: int, radius: int) -> None:
        self.n, self.height, self.data_bytes, self.radius = n, height, data_bytes, radius
        self.left = 8 * -(-(radius + 32) // 64)
        self.row_bytes = -(-(self.left + data_bytes + 1) // 8) * 8
        self.top = -(-radius // 8) * 8
        self.slot = -(-(height + radius) // 8) * 8
        self.rows = self.top + n * self.slot + 1

    def empty(self) -> np.ndarray:
        return np.zeros((self.rows, self.row_bytes), dtype=np.uint8)

    def frames(self, buf: np.ndarray) -> np.ndarray:
        """The frames' slots of a buffer: [n, slot, row_bytes] (a view)."""
        return buf[self.top : self.rows - 1].reshape(self.n, self.slot, self.row_bytes)

    def place(self, packed: np.ndarray) -> np.ndarray:
        """uint8 [n, height, data_bytes] -> a new buffer holding them."""
        buf = self.empty()
        self.frames(buf)[:, : self.height, self.left : self.left + self.data_bytes] = packed
        return buf

    def frame_of(self, bit: np.ndarray) -> np.ndarray:
        """Frame index of flat bit positions inside the frames' rows."""
        return (bit // (8 * self.row_bytes) - self.top) // self.slot


def _popcount_frames(layout: _Layout, buf: np.ndarray) -> np.ndarray:
    """Set bits per frame of a :class:`_Layout` buffer -> int64 [n]."""
    frames = layout.frames(buf).reshape(layout.n, -1)
    if not hasattr(np, "bitwise_count"):  # NumPy < 2
        return _popcount_frames_table(frames)
    return np.bitwise_count(frames.view(np.uint64)).sum(axis=1, dtype=np.int64)


def _popcount_frames_table(frames: np.ndarray) -> np.ndarray:
    """Set bits per row of uint8 [n, k] with a byte lookup table (NumPy < 2 has no ``bitwise_count``)."""
    return _POPCOUNT8[frames].sum(axis=1, dtype=np.int64)


def _packed_boundary(layout: _Layout, m: np.ndarray, right_edge_bit: int | None) -> np.ndarray:
    """``_seg2bmap`` on packed masks.

    Args:
        layout: where the masks are in ``m``.
        m: uint8 [rows, row_bytes] packed masks (:meth:`_Layout.place`).
        right_edge_bit: when the last data byte holds the image's last column, that column's bit (it compares only
            with the pixel below); None when the masks continue to the right with background.

    Returns:
        uint8 [rows, row_bytes] packed boundaries, in the same layout (zero outside the frames' rows and bytes).

    Every pass runs over the whole buffer as one flat uint64 array (little-endian words keep the pixel order):
    shifting it by one bit moves each pixel onto its right neighbour (zero bytes end each row), and shifting it by
    one row of words onto its lower neighbour.
    """
    row_words = layout.row_bytes // 8
    flat = m.reshape(-1).view(_WORD)
    # h: differs from the right neighbour = m ^ (m shifted by one pixel towards the origin)
    h = np.right_shift(flat, np.uint64(1))
    h[:-1] |= np.left_shift(flat[1:], np.uint64(63))
    h ^= flat
    h8 = h.view(np.uint8).reshape(m.shape)
    data = slice(layout.left, layout.left + layout.data_bytes)
    h8[:, : data.start] = 0  # the left padding picked up the row's first pixel
    if right_edge_bit is not None:
        h8[:, data.stop - 1] &= np.uint8(0xFF ^ (1 << right_edge_bit))
    # b = v | h | h of the row below, with v: differs from the lower neighbour (see _seg2bmap)
    b = np.empty_like(flat)
    np.bitwise_xor(flat[:-row_words], flat[row_words:], out=b[:-row_words])
    b[-row_words:] = 0
    b |= h
    b[:-row_words] |= h[row_words:]
    b8 = b.view(np.uint8).reshape(m.shape)
    b8[: layout.top] = 0  # the last zero row above the first frame saw its first row
    frames_b, frames_h = layout.frames(b8), layout.frames(h8)
    height = layout.height
    frames_b[:, height - 1] = frames_h[:, height - 1]  # last row: right neighbour only
    frames_b[:, height:] = 0  # rows below a frame (the last of them saw the next frame)
    return b8


def _set_bits(buf: np.ndarray) -> np.ndarray:
    """Flat bit positions (``byte * 8 + bit``) of the set bits of a uint8 buffer whose size is a multiple of 8,
    ascending, int64 [K].

    Nonzero 64-bit words first, then their nonzero bytes, then the bits of those: each step scans only the parts
    of the buffer that hold something.
    """
    flat = buf.reshape(-1)
    words = np.flatnonzero(flat.view(np.uint64) != 0)  # (nonzero on a bool array is the fast path)
    word_bytes = flat.reshape(-1, 8)[words].reshape(-1)
    in_words = np.flatnonzero(word_bytes != 0)
    bits = np.flatnonzero(_BYTE_BITS[word_bytes[in_words]])  # [bytes * 8]
    byte_i = in_words[bits >> 3]
    return (words[byte_i >> 3] * 8 + (byte_i & 7)) * 8 + (bits & 7)


def _near_cells(layout: _Layout, dst: np.ndarray) -> np.ndarray:
    """uint8 [rows / 8, row_bytes]: 255 where a cell of 8 x 8 pixels may have a ``dst`` pixel within the radius.

    A pixel in cell (Y, X) has its whole disk inside cells Y +- ceil(r / 8), X +- ceil(r / 8); the cells around
    an occupied cell are marked in that box (a superset of the disk, so nothing that can match is dropped).
    """
    cells = dst[: layout.rows - 1].reshape(-1, 8, layout.row_bytes)  # OR over the 8 rows of each cell, halving
    cells = cells[:, :4] | cells[:, 4:]
    cells = cells[:, :2] | cells[:, 2:]
    occupied = (cells[:, 0] | cells[:, 1]) != 0  # [rows / 8, row_bytes]
    reach = -(-layout.radius // 8)
    for axis in (0, 1):
        src = occupied.copy()
        for d in range(1, min(reach, occupied.shape[axis] - 1) + 1):
            lo, hi = [slice(None)] * 2, [slice(None)] * 2
            lo[axis], hi[axis] = slice(None, -d), slice(d, None)
            occupied[tuple(hi)] |= src[tuple(lo)]
            occupied[tuple(lo)] |= src[tuple(hi)]
    return np.negative(occupied.view(np.uint8))  # 1 -> 255


@lru_cache(maxsize=64)
def _disk_rows(radius: int) -> tuple[tuple[int, tuple[tuple[int, int], ...]], ...]:
    """The disk as row tests on 32-bit pieces of a window, centre row first: ``((dy, ((piece, mask), ...)), ...)``.

    For a pixel x the window starts at bit ``x - radius`` of row ``y + dy``; row dy of the disk is the bits
    ``[radius - w, radius + w]`` of it (``w = isqrt(r² - dy²)``), split into the 32-bit pieces ``piece`` of the
    window (one piece up to r = 15).
    """
    widths = disk_half_widths(radius)
    rows = []
    for dy in sorted(range(-radius, radius + 1), key=lambda d: (abs(d), d)):
        w = widths[abs(dy)]
        lo, hi = radius - w, radius + w  # inclusive bit range in the window
        tests = []
        for piece in range(lo // 32, hi // 32 + 1):
            a, b = max(lo, 32 * piece) - 32 * piece, min(hi, 32 * piece + 31) - 32 * piece
            tests.append((piece, ((1 << (b + 1)) - 1) ^ ((1 << a) - 1)))
        rows.append((dy, tuple(tests)))
    return tuple(rows)


def _count_near(layout: _Layout, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per frame, how many set pixels of ``src`` have a set pixel of ``dst`` in the disk of the radius around them.

    Equals ``sum(src & dilate(dst, disk))`` with a zero border (what the official code computes with ``cv2.dilate``
    and a ``skimage.morphology.disk``), without dilating anything: each candidate ``src`` pixel reads, for each row
    ``dy`` of the disk, the bits of ``dst`` row ``y + dy`` from ``x - radius`` on (one 64-bit load and a shift per
    32-bit piece of the window) and tests them against the row's mask. Rows go from the centre out and matched
    pixels stop. ``src`` pixels whose 8 x 8 cell has no ``dst`` pixel within reach (:func:`_near_cells`) are never
    read.

    Args:
        layout: where the boundaries are in ``src`` and ``dst``.
        src, dst: packed boundaries uint8 [rows, row_bytes].
    """
    n, row_bytes = layout.n, layout.row_bytes
    near = _near_cells(layout, dst)
    cand = np.bitwise_and(src[: layout.rows - 1].reshape(-1, 8, row_bytes), near[:, None, :])
    bit = _set_bits(cand)
    if bit.size == 0:
        return np.zeros(n, dtype=np.int64)
    n_cand = np.bincount(layout.frame_of(bit), minlength=n)
    # the 64-bit words that start at every 32nd bit of dst (an unaligned view, copied once): the bits from any
    # position p on are steps[p >> 5] >> (p & 31), at least 33 of them
    dst8 = dst.reshape(-1)
    steps = np.ndarray((dst8.size // 4 - 1,), dtype=_WORD, buffer=dst8, strides=(4,)).copy()
    start = bit - layout.radius  # window starts (in the same row: the left padding is wider than the radius)
    base = start >> 5
    shift = (start & 31).astype(_WORD)
    row_steps = row_bytes // 4
    for dy, row_tests in _disk_rows(layout.radius):  # base/shift hold the pixels not matched yet
        hit: np.ndarray | None = None
        for piece, mask in row_tests:
            window = steps[base + (row_steps * dy + piece)]
            window >>= shift
            window &= np.uint64(mask)
            hit = window != 0 if hit is None else hit | (window != 0)
        assert hit is not None  # every disk row has at least one test
        miss = ~hit
        base, shift = base[miss], shift[miss]
        if base.size == 0:
            break
    # base * 32 is in the window start's row: at least 32 bits of left padding precede it
    unmatched = np.bincount(layout.frame_of(base * 32), minlength=n)
    return (n_cand - unmatched).astype(np.int64)


def _scan(
    p: np.ndarray, g: np.ndarray, v: np.ndarray | None, radius: int | None, need_j: bool = True
) -> dict[str, np.ndarray]:
    """Pixel counts of bool [N, H, W] masks, chunk of frames by chunk of frames.

    Each chunk is bit-packed, cropped to the rows and bytes that hold foreground (plus a background margin, so
    that the boundaries and their matches equal those of the whole frame), placed in a :class:`_Layout` buffer and
    counted there.

    Returns int64 [N] arrays: ``inter``/``union`` (J, void excluded) and, when ``radius`` is given, ``n_fg``/``n_gt``
    (boundary pixels) and ``fg_match``/``gt_match`` (boundary pixels within the disk of the other boundary).
    """
    n_total, height, width = p.shape
    keys = (["inter", "union"] if need_j else []) + (
        ["n_fg", "n_gt", "fg_match", "gt_match"] if radius is not None else []
    )
    out = {k: np.zeros(n_total, dtype=np.int64) for k in keys}
    chunk = max(1, _CHUNK_PIXELS // (height * width))
    n_bytes = -(-width // 8)
    for start in range(0, n_total, chunk):
        sl = slice(start, start + chunk)
        pp, gp = _pack(p[sl]), _pack(g[sl])
        if v is not None:
            keep = np.invert(_pack(v[sl]))
            pp &= keep
            gp &= keep
        window = _crop(pp, gp)
        if window is None:  # both masks empty in every frame of the chunk: nothing to count
            continue
        (y0, y1), (b0, b1) = window
        layout = _Layout(pp.shape[0], y1 - y0, b1 - b0, radius or 0)
        pc, gc = layout.place(pp[:, y0:y1, b0:b1]), layout.place(gp[:, y0:y1, b0:b1])
        if need_j:
            inter = _popcount_frames(layout, pc & gc)
            out["inter"][sl] = inter
            out["union"][sl] = _popcount_frames(layout, pc) + _popcount_frames(layout, gc) - inter
        if radius is not None:
            edge_bit = (width - 1) % 8 if b1 == n_bytes else None
            fg_b, gt_b = _packed_boundary(layout, pc, edge_bit), _packed_boundary(layout, gc, edge_bit)
            out["n_fg"][sl] = _popcount_frames(layout, fg_b)
            out["n_gt"][sl] = _popcount_frames(layout, gt_b)
            out["fg_match"][sl] = _count_near(layout, fg_b, gt_b)  # fg boundary within the dilated gt one
            out["gt_match"][sl] = _count_near(layout, gt_b, fg_b)  # gt boundary within the dilated fg one
    return out


def _crop(pp: np.ndarray, gp: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Row range and byte range of packed masks uint8 [n, H, nb] that hold all their foreground plus one background
    row above and below and the byte left of it (clipped to the image), or None when both are empty.

    Inside this window the boundaries, their matches and the pixel counts equal those of the whole frame: a
    boundary pixel is at most one pixel above/left of the foreground (``_seg2bmap`` looks right and down); the
    extra row below is background on both masks, so the window's own last-row rule gives no boundary there; right
    of the window everything is background, which is what the packed shifts assume (the image's own last column
    keeps its rule, see :func:`_packed_boundary`); and dst pixels exist only inside the window, so dilation
    windows clipped to it contain the same pixels as clipped to the image.
    """
    occupied = np.bitwise_or.reduce(pp, axis=0) | np.bitwise_or.reduce(gp, axis=0)  # [H, nb]
    rows = np.flatnonzero(occupied.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(occupied.any(axis=0))
    height = occupied.shape[0]
    return ((max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)), (max(int(cols[0]) - 1, 0), int(cols[-1]) + 1))


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

        first = v[ids[0] : stop(1)]
        last = v[ids[3] : stop(4)]
        decay = np.nanmean(first) - np.nanmean(last)
    return float(mean), float(recall), float(decay)

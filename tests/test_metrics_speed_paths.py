"""The fast code paths of lvseg.metrics.davis (bit-packed masks, cropping, 64-bit window matching, chunking) against
a straightforward per-frame implementation of the official definitions, and against the official golden values.

The reference below is written directly from davis2017-evaluation's ``db_eval_iou`` / ``f_measure`` /
``_seg2bmap`` (shifted copies, a dense disk dilation with a zero border), one frame at a time, so it shares no code
with the implementation under test. Comparisons are exact (``==`` on float64), not approximate.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

import lvseg.metrics.davis as davis
from lvseg.metrics import boundary_f, boundary_radius, region_and_boundary, region_similarity

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "davis_metrics_golden.json").read_text())


# ------------------------------------------------------------------------------------------- slow reference


def _ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _ref_disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


def _ref_j(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> float:
    keep = np.ones_like(gt) if void is None else ~void
    inters = np.sum((gt & pred) & keep)
    union = np.sum((gt | pred) & keep)
    return 1.0 if union == 0 else inters / union


def _ref_f(pred: np.ndarray, gt: np.ndarray, bound_th: float, void: np.ndarray | None) -> float:
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    bound_pix = bound_th if bound_th >= 1 else int(np.ceil(bound_th * np.linalg.norm(pred.shape)))
    fg_boundary, gt_boundary = _ref_seg2bmap(pred), _ref_seg2bmap(gt)
    disk = _ref_disk(int(bound_pix))
    fg_dil = ndimage.binary_dilation(fg_boundary, disk)
    gt_dil = ndimage.binary_dilation(gt_boundary, disk)
    gt_match = gt_boundary & fg_dil
    fg_match = fg_boundary & gt_dil
    n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _reference(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008,
               void: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    voids = [None] * len(pred) if void is None else np.broadcast_to(void, pred.shape)
    j = [float(_ref_j(p, g, v)) for p, g, v in zip(pred, gt, voids)]
    f = [float(_ref_f(p, g, bound_th, v)) for p, g, v in zip(pred, gt, voids)]
    return j, f


def _assert_same(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None) -> None:
    j, f = region_and_boundary(pred, gt, bound_th, void)
    ref_j, ref_f = _reference(pred, gt, bound_th, void)
    assert j.tolist() == ref_j
    assert f.tolist() == ref_f


# ----------------------------------------------------------------------------------------------- masks


def _blobs(rng: np.random.Generator, n: int, h: int, w: int, count: int) -> np.ndarray:
    """n frames of a few random filled ellipses (some cut by the image border)."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), bool)
    for k in range(n):
        for _ in range(count):
            cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
            ry, rx = rng.uniform(1, max(1.5, h / 3)), rng.uniform(1, max(1.5, w / 3))
            out[k] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


@pytest.mark.parametrize("shape", [(3, 37, 53), (2, 64, 64), (2, 23, 129), (2, 8, 8), (2, 9, 17), (3, 30, 1),
                                   (3, 1, 30), (1, 1, 1), (2, 2, 2), (2, 71, 65)])
def test_random_masks_equal_reference(shape: tuple[int, int, int]) -> None:
    """Blobs, noise, 1-pixel objects, empty and full frames, at sizes that are and are not multiples of 8."""
    rng = np.random.default_rng(sum(shape))
    n, h, w = shape
    cases = [
        (_blobs(rng, n, h, w, 3), _blobs(rng, n, h, w, 2)),
        (rng.random(shape) < 0.3, rng.random(shape) < 0.05),
        (np.zeros(shape, bool), _blobs(rng, n, h, w, 1)),
        (np.zeros(shape, bool), np.zeros(shape, bool)),
        (np.ones(shape, bool), rng.random(shape) < 0.5),
    ]
    one_pixel = np.zeros(shape, bool)
    one_pixel[np.arange(n), rng.integers(0, h, n), rng.integers(0, w, n)] = True
    cases.append((one_pixel, np.roll(one_pixel, (1, 2), axis=(1, 2))))
    for pred, gt in cases:
        for bound_th in (0.008, 0.05, 1, 3):
            _assert_same(pred, gt, bound_th)
            _assert_same(gt, pred, bound_th)


@pytest.mark.parametrize("radius", [0, 1, 2, 8, 15, 16, 31, 32, 64, 70])
def test_radii_across_window_pieces(radius: int) -> None:
    """Disks wider than one 32-bit piece of the window (r >= 16) are tested piece by piece; r = 0 matches the
    pixel itself."""
    rng = np.random.default_rng(radius)
    shape = (2, 40, 150) if radius < 16 else (1, 24, 150)  # (the reference's dilation is slow for large disks)
    pred = ndimage.binary_dilation(rng.random(shape) < 0.003, iterations=2)
    gt = rng.random(shape) < 0.004
    gt[0, 5:9, 0:3] = True  # touching the left border
    gt[-1, -10:, 140:150] = True  # bottom-right corner
    if radius == 0:
        gt |= pred  # something to match exactly
    _assert_same(pred, gt, radius)
    _assert_same(gt, pred, radius)


def test_border_objects_at_byte_boundaries() -> None:
    """Objects in the last column, in a last byte that is full or holds a single pixel, and in the last row."""
    for width in (8, 9, 15, 16, 17, 24, 25):
        h = 12
        pred = np.zeros((4, h, width), bool)
        gt = np.zeros_like(pred)
        pred[0, 3:6, width - 1] = True
        gt[0, 4:8, width - 2:] = True
        pred[1, h - 1, 2:5] = True
        gt[1, h - 2:, 3:] = True
        pred[2, 0, 0] = True
        gt[2, 0, width - 1] = True
        pred[3, :, width - 1] = True
        gt[3, h - 1, :] = True
        for bound_th in (1, 2, 0.1):
            _assert_same(pred, gt, bound_th)
            _assert_same(gt, pred, bound_th)


def test_crop_window_does_not_change_values() -> None:
    """A small object far from every border (cropped to a few bytes and rows) gives the same values as the same
    object placed against each border (no crop on that side); left edges on and off byte boundaries."""
    rng = np.random.default_rng(5)
    obj_p, obj_g = rng.random((2, 9, 13)) < 0.6, _blobs(rng, 2, 9, 13, 2)
    h, w = 60, 90
    for y, x in [(20, 33), (0, 0), (h - 9, w - 13), (0, w - 13), (h - 9, 0), (25, 40), (30, 8), (31, 1)]:
        pred = np.zeros((2, h, w), bool)
        gt = np.zeros_like(pred)
        pred[:, y:y + 9, x:x + 13] = obj_p
        gt[:, y:y + 9, x + 1:x + 13] = obj_g[:, :, 1:]
        for bound_th in (0, 1, 3):
            _assert_same(pred, gt, bound_th)


def test_frames_do_not_match_across_each_other() -> None:
    """Frames share one padded buffer: a boundary at the bottom of frame k must not match one at the top of k + 1."""
    h, w = 20, 30
    pred = np.zeros((3, h, w), bool)
    gt = np.zeros_like(pred)
    pred[0, h - 2:, 5:15] = True  # bottom of frame 0 ...
    gt[0, :2, 20:28] = True
    gt[1, :2, 5:15] = True  # ... right above the top of frame 1
    pred[1, h - 2:, 20:28] = True
    pred[2, :2, 5:15] = True
    gt[2, h - 2:, 5:15] = True
    j, f = region_and_boundary(pred, gt, 3)
    assert f.tolist() == [0.0, 0.0, 0.0]
    assert f.tolist() == _reference(pred, gt, 3)[1]
    assert j.tolist() == [0.0, 0.0, 0.0]


def test_void_pixels_equal_reference() -> None:
    rng = np.random.default_rng(3)
    pred, gt = _blobs(rng, 3, 45, 67, 3), _blobs(rng, 3, 45, 67, 3)
    void = np.zeros((45, 67), bool)
    void[:, 30:34] = True  # a band that cuts objects
    void[40:, :] = True
    _assert_same(pred, gt, 0.008, void)
    _assert_same(pred, gt, 2, rng.random((3, 45, 67)) < 0.05)


@pytest.mark.parametrize("chunk_pixels", [1, 45 * 67 * 2 - 1, 45 * 67 * 2])
def test_chunk_size_does_not_change_values(monkeypatch: pytest.MonkeyPatch, chunk_pixels: int) -> None:
    rng = np.random.default_rng(4)
    pred, gt = _blobs(rng, 5, 45, 67, 2), _blobs(rng, 5, 45, 67, 2)
    gt[2] = False  # an empty frame in the middle of a chunk
    pred[2] = False
    expected = _reference(pred, gt, 0.05)
    monkeypatch.setattr(davis, "_CHUNK_PIXELS", chunk_pixels)
    j, f = region_and_boundary(pred, gt, 0.05)
    assert (j.tolist(), f.tolist()) == expected


def test_golden_values_with_one_frame_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case of the official golden file, frame by frame (each frame cropped on its own)."""
    monkeypatch.setattr(davis, "_CHUNK_PIXELS", 1)
    for case in GOLDEN["cases"]:
        decode = [mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in case["pred"]]
        pred = np.stack(decode).astype(bool)
        gt = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})
                       for r in case["gt"]]).astype(bool)
        void = None
        if "void" in case:
            void = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})
                             for r in case["void"]]).astype(bool)
        assert region_similarity(pred, gt, void).tolist() == case["J"], case["name"]
        assert boundary_f(pred, gt, case["bound_th"], void).tolist() == case["F"], case["name"]


def test_benchmark_sized_sequence_equals_reference() -> None:
    """A 480x854 sequence like benchmarks/metrics_speed.py's (moving ellipses, stray pixels), a few frames."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from metrics_speed import make_sequence
    finally:
        sys.path.pop(0)
    pred, gt = make_sequence(objects=2, frames=2, height=480, width=854, seed=1)
    assert boundary_radius(480, 854) == 8
    j, f = region_and_boundary(pred, gt)
    ref_j, ref_f = _reference(pred.reshape(-1, 480, 854), gt.reshape(-1, 480, 854))
    assert j.reshape(-1).tolist() == ref_j
    assert f.reshape(-1).tolist() == ref_f


# ------------------------------------------------------------------------------------ the packed helpers


def _unplace(layout: davis._Layout, buf: np.ndarray, width: int) -> np.ndarray:
    """A layout buffer's frames as bool [n, height, width] (the inverse of packing and placing)."""
    data = layout.frames(buf)[:, :layout.height, layout.left:layout.left + layout.data_bytes]
    return np.unpackbits(data, axis=-1, bitorder="little")[..., :width].astype(bool)


@pytest.mark.parametrize("radius", [0, 8, 40])
def test_layout_places_frames_apart(radius: int) -> None:
    layout = davis._Layout(n=3, height=13, data_bytes=3, radius=radius)
    assert layout.top % 8 == 0 and layout.slot % 8 == 0 and layout.row_bytes % 8 == 0
    assert layout.slot >= 13 + radius and layout.top >= radius
    assert 8 * layout.left - radius >= 32 and layout.row_bytes - layout.left - 3 >= 1
    seg = np.random.default_rng(radius).random((3, 13, 20)) < 0.5
    buf = layout.place(davis._pack(seg))
    assert buf.shape == (layout.rows, layout.row_bytes)
    assert _unplace(layout, buf, 20).tolist() == seg.tolist()
    assert int(np.unpackbits(buf).sum()) == int(seg.sum())  # nothing outside the frames' data
    bits = davis._set_bits(buf)
    assert np.bincount(layout.frame_of(bits), minlength=3).tolist() == seg.sum(axis=(1, 2)).tolist()


def test_packed_boundary_equals_seg2bmap() -> None:
    rng = np.random.default_rng(6)
    for h, w in [(1, 1), (1, 9), (9, 1), (7, 8), (8, 16), (13, 21), (5, 64), (3, 65)]:
        seg = rng.random((3, h, w)) < 0.5
        data_bytes = -(-w // 8)
        layout = davis._Layout(3, h, data_bytes, 8)
        b = davis._packed_boundary(layout, layout.place(davis._pack(seg)), (w - 1) % 8)
        assert _unplace(layout, b, w).tolist() == [_ref_seg2bmap(s).tolist() for s in seg]
        assert int(np.unpackbits(b).sum()) == sum(int(_ref_seg2bmap(s).sum()) for s in seg)  # nothing elsewhere


def test_set_bits_and_popcounts() -> None:
    rng = np.random.default_rng(7)
    seg = rng.random((3, 16, 37)) < 0.1
    layout = davis._Layout(3, 16, 5, 3)
    buf = layout.place(davis._pack(seg))
    bits = davis._set_bits(buf)
    expected = [(layout.top + k * layout.slot + y) * 8 * layout.row_bytes + 8 * layout.left + x
                for k, y, x in np.argwhere(seg)]
    assert bits.tolist() == expected
    counts = seg.sum(axis=(1, 2)).tolist()
    assert davis._popcount_frames(layout, buf).tolist() == counts
    assert davis._popcount_frames_table(layout.frames(buf).reshape(3, -1)).tolist() == counts  # NumPy < 2 path


@pytest.mark.parametrize("radius", [0, 3, 8, 9, 20])
def test_near_cells_cover_every_reachable_pixel(radius: int) -> None:
    """The coarse pre-filter may keep too much but never drops a pixel within the disk of a dst pixel."""
    rng = np.random.default_rng(radius)
    dst = rng.random((2, 48, 80)) < 0.002
    dst[0, 0, 0] = dst[1, 47, 79] = True
    layout = davis._Layout(2, 48, 10, radius)
    near = davis._near_cells(layout, layout.place(davis._pack(dst)))  # [rows / 8, row_bytes], 0 or 255
    assert set(np.unique(near).tolist()) <= {0, 255}
    keep_rows = np.repeat(np.repeat(near == 255, 8, axis=0), 8, axis=1)  # [rows - 1, 8 * row_bytes]
    keep = np.stack([keep_rows[layout.top + k * layout.slot:][:48, 8 * layout.left:][:, :80] for k in range(2)])
    reach = np.stack([ndimage.binary_dilation(d, _ref_disk(radius)) for d in dst])
    assert not (reach & ~keep).any()
    assert not keep.all()  # and it does drop something


@pytest.mark.parametrize("radius", [0, 1, 8, 15, 16, 31, 32, 70])
def test_disk_rows_describe_the_disk(radius: int) -> None:
    rows = davis._disk_rows(radius)
    assert [dy for dy, _ in rows][:3] == ([0] if radius == 0 else [0, -1, 1])
    covered = np.zeros((2 * radius + 1, 2 * radius + 1), bool)
    for dy, tests in rows:
        for piece, mask in tests:
            assert 0 < mask < 1 << 32
            for bit in range(32):
                if mask >> bit & 1:
                    covered[dy + radius, 32 * piece + bit] = True
    assert covered.tolist() == _ref_disk(radius).tolist()


def test_benchmark_script_runs_without_opencv(tmp_path: Path) -> None:
    """benchmarks/metrics_speed.py on a tiny sequence: every implementation agrees, and without OpenCV it says so."""
    hide = tmp_path / "cv2.py"  # an import of this cv2 fails like a missing OpenCV
    hide.write_text("raise ImportError('OpenCV hidden for this test')\n")
    env = {"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metrics_speed.py"), "--frames", "2",
                          "--objects", "1", "--height", "60", "--width", "90", "--repeat", "1"],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "OpenCV is not importable" in out
    rows = [line for line in out.splitlines() if line.startswith(("lvseg", "per-frame"))]
    assert len(rows) == 2 and all(line.rstrip().endswith("yes") for line in rows)
    assert math.isfinite(float(rows[1].split()[-3].rstrip("x")))

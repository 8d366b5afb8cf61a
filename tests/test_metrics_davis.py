"""DAVIS J, F and db_statistics against values computed with the official davis2017-evaluation code.

tests/fixtures/davis_metrics_golden.json holds masks (COCO RLE) and the J/F values that the official metrics.py
(davisvideochallenge/davis2017-evaluation, commit in the file) printed for them: random blobs at several sizes
(480x854, 720x1280, odd sizes), noise masks, 1-pixel objects, masks touching the border, empty/full masks,
1-row/1-column canvases, void pixels and integer bound_th; plus db_statistics on random vectors (with NaN and
lengths past the uint8 overflow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from lvseg.errors import InvalidInputError
from lvseg.metrics import (
    boundary_f,
    boundary_map,
    boundary_radius,
    db_statistics,
    disk_half_widths,
    region_and_boundary,
    region_similarity,
)

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "davis_metrics_golden.json").read_text())


def _decode(rles: list[dict]) -> np.ndarray:
    return np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles]).astype(bool)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_j_and_f_equal_official(case: dict) -> None:
    pred, gt = _decode(case["pred"]), _decode(case["gt"])
    void = _decode(case["void"]) if "void" in case else None
    j = region_similarity(pred, gt, void)
    f = boundary_f(pred, gt, case["bound_th"], void)
    assert isinstance(j, np.ndarray) and j.dtype == np.float64 and j.shape == (pred.shape[0],)
    # bit-identical, not approximately equal
    assert j.tolist() == case["J"]
    assert f.tolist() == case["F"]


def test_anchor_values_from_research_notes() -> None:
    gt = np.zeros((480, 854), bool)
    gt[100:300, 200:500] = True
    expected = GOLDEN["anchors_480x854_gt_100_300_200_500"]
    cases = {"shifted": (slice(110, 310), slice(210, 510)), "cropped": (slice(100, 300), slice(200, 480)),
             "inner": (slice(120, 280), slice(230, 470))}
    for name, (rows, cols) in cases.items():
        pred = np.zeros_like(gt)
        pred[rows, cols] = True
        assert [region_similarity(pred, gt), boundary_f(pred, gt)] == expected[name]
    assert expected["shifted"][1] == 0.034 and expected["inner"] == [0.64, 0.0]
    empty = np.zeros_like(gt)
    assert (region_similarity(empty, empty), boundary_f(empty, empty)) == (1.0, 1.0)
    assert (region_similarity(empty, gt), boundary_f(empty, gt)) == (0.0, 0.0)
    assert (region_similarity(gt, empty), boundary_f(gt, empty)) == (0.0, 0.0)


def test_torch_inputs_batched_and_same_values() -> None:
    case = next(c for c in GOLDEN["cases"] if c["name"] == "blobs_97x131")
    pred, gt = _decode(case["pred"]), _decode(case["gt"])
    j = region_similarity(torch.from_numpy(pred), torch.from_numpy(gt))
    f = boundary_f(torch.from_numpy(pred).to(torch.uint8) * 255, torch.from_numpy(gt))
    assert isinstance(j, torch.Tensor) and j.dtype == torch.float64
    assert j.tolist() == case["J"] and f.tolist() == case["F"]
    # extra leading dimensions: [2, T, H, W] -> [2, T]
    f2 = boundary_f(np.stack([pred, gt]), np.stack([gt, gt]))
    assert f2.shape == (2, pred.shape[0])
    assert f2[0].tolist() == case["F"] and f2[1].tolist() == [1.0] * pred.shape[0]
    # a single frame gives a Python float
    assert boundary_f(pred[0], gt[0]) == case["F"][0]


def test_chunking_does_not_change_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import lvseg.metrics.davis as davis

    case = next(c for c in GOLDEN["cases"] if c["name"] == "blobs_240x320")
    pred, gt = _decode(case["pred"]), _decode(case["gt"])
    monkeypatch.setattr(davis, "_CHUNK_PIXELS", 1)  # one frame per chunk
    assert boundary_f(pred, gt).tolist() == case["F"]


def test_void_broadcasts_from_a_single_frame() -> None:
    gt = np.zeros((3, 20, 30), bool)
    gt[:, 5:15, 5:20] = True
    pred = np.roll(gt, 2, axis=2)
    void = np.zeros((20, 30), bool)
    void[:, 18:] = True
    j = region_similarity(pred, gt, void)
    # explicit count: void columns 18..29 are removed from both masks
    keep = ~void
    inter = (pred & gt & keep).sum((1, 2))
    union = ((pred | gt) & keep).sum((1, 2))
    assert j.tolist() == (inter / union).tolist()
    assert boundary_f(pred, gt, void=void).tolist() == boundary_f(pred, gt, void=np.broadcast_to(void, gt.shape)).tolist()


def test_boundary_map_definition() -> None:
    seg = np.zeros((4, 5), bool)
    seg[1:3, 1:3] = True
    b = boundary_map(seg)
    # pixels that differ from their right, lower or lower-right neighbour (boundary shifted towards the origin)
    expected = np.array([
        [1, 1, 1, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ], bool)
    assert b.tolist() == expected.tolist()
    full = np.ones((3, 4), bool)
    assert not boundary_map(full).any()  # the image border is not a boundary
    last = np.zeros((3, 4), bool)
    last[-1, 1] = True  # last row: only compared with the right neighbour
    assert np.argwhere(boundary_map(last)).tolist() == [[1, 0], [1, 1], [2, 0], [2, 1]]


@pytest.mark.parametrize("radius", list(range(0, 16)))
def test_disk_half_widths_describe_exactly_the_disk(radius: int) -> None:
    widths = disk_half_widths(radius)
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    covered = np.abs(xx) <= np.array([widths[abs(dy)] for dy in range(-radius, radius + 1)])[:, None]
    assert covered.tolist() == (yy ** 2 + xx ** 2 <= radius ** 2).tolist()


def test_f_equals_explicit_dilation_on_random_masks() -> None:
    """F from boundary lookups equals the textbook definition with an explicit disk dilation (zero border)."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    for shape, radius in [((3, 50, 70), 2), ((2, 31, 17), 5), ((2, 9, 200), 1)]:
        pred = rng.random(shape) < 0.3
        gt = ndimage.binary_dilation(rng.random(shape) < 0.02, iterations=2)
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        disk = yy ** 2 + xx ** 2 <= radius ** 2
        expected = []
        for p, g in zip(pred, gt):
            pb, gb = boundary_map(p), boundary_map(g)
            p_dil, g_dil = ndimage.binary_dilation(pb, disk), ndimage.binary_dilation(gb, disk)
            precision = (pb & g_dil).sum() / pb.sum() if pb.sum() else 1.0
            recall = (gb & p_dil).sum() / gb.sum() if gb.sum() else 1.0
            expected.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
        assert boundary_f(pred, gt, bound_th=radius).tolist() == pytest.approx(expected, abs=1e-15)
        j, f = region_and_boundary(pred, gt, bound_th=radius)
        assert f.tolist() == boundary_f(pred, gt, bound_th=radius).tolist()
        assert j.tolist() == region_similarity(pred, gt).tolist()


def test_boundary_radius_rule() -> None:
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(480, 640) == 7
    assert boundary_radius(720, 1280) == 12
    assert boundary_radius(240, 320) == 4
    assert boundary_radius(100, 100, 3) == 3
    with pytest.raises(InvalidInputError, match="whole number"):
        boundary_radius(100, 100, 2.5)
    with pytest.raises(InvalidInputError):
        boundary_radius(100, 100, -0.1)


def test_db_statistics_equal_official() -> None:
    for entry in GOLDEN["db_statistics"]:
        values = np.array([np.nan if v is None else v for v in entry["values"]])
        expected = [np.nan if v is None else v for v in entry["stats"]]
        got = db_statistics(values)
        assert np.array_equal(np.array(got), np.array(expected), equal_nan=True), (len(values), got, expected)


def test_db_statistics_decay_overflow_quirk_is_optional() -> None:
    values = np.linspace(1.0, 0.0, 300)
    quirk = db_statistics(values)
    fixed = db_statistics(values, decay_uint8_overflow=False)
    assert quirk[:2] == fixed[:2]
    assert math.isnan(quirk[2])  # the wrapped last bin is empty
    # intended definition: bins at frames 0..75 and 224..299 of a linear ramp
    assert fixed[2] == pytest.approx(np.mean(values[0:76]) - np.mean(values[224:300]))
    short = np.linspace(1.0, 0.0, 80)
    assert db_statistics(short) == db_statistics(short, decay_uint8_overflow=False)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="same shape"):
        region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InvalidInputError, match=r"\[H, W\]"):
        boundary_f(np.zeros(4), np.zeros(4))
    with pytest.raises(InvalidInputError, match="numpy array or torch tensor"):
        region_similarity("mask", np.zeros((2, 2)))
    with pytest.raises(InvalidInputError, match="broadcast"):
        region_similarity(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), void=np.zeros((3, 4, 4)))
    with pytest.raises(InvalidInputError, match="non-empty 1-D"):
        db_statistics([])

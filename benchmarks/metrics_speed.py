"""J&F speed: lvseg's batched metrics vs a straightforward per-frame NumPy/OpenCV implementation of the same algorithm.

A DAVIS-sized sequence (default 80 frames of 480x854, 3 objects): ground truth are moving ellipses, predictions
are shifted and noisy copies (with a few stray pixels all over the frame). Every implementation must give
bit-identical J and F (checked); the script prints the median time of each over ``--repeat`` runs (taken in turn,
so that a change in machine load hits all of them alike) and lvseg's speed-up.

    python benchmarks/metrics_speed.py [--frames 80] [--objects 3] [--repeat 5] [--device cpu|cuda]
        [--opencv-site DIR] [--scipy-repeat 1]

The baselines follow the official definitions frame by frame: J from pixel counts, F from ``_seg2bmap``-style
boundaries dilated by a disk, once with ``cv2.dilate`` as the official code does and once with
``scipy.ndimage.binary_dilation`` (zero border). OpenCV is not an lvseg dependency: when ``import cv2`` fails the
script says so and compares with the NumPy+SciPy baseline only. ``--opencv-site`` appends a site-packages folder
that has OpenCV (e.g. of a scratch virtual environment) to ``sys.path``. The SciPy baseline takes ~100x longer
than lvseg, so it runs ``--scipy-repeat`` times (default once).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from lvseg.metrics import region_and_boundary

# ----------------------------------------------------------------------------------------- straightforward baseline


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (yy ** 2 + xx ** 2) <= radius ** 2


def _boundary(seg: np.ndarray) -> np.ndarray:
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _f_frame(pred: np.ndarray, gt: np.ndarray, dilate) -> float:
    radius = math.ceil(0.008 * np.linalg.norm(pred.shape))
    fg_b, gt_b = _boundary(pred), _boundary(gt)
    fg_dil, gt_dil = dilate(fg_b, radius), dilate(gt_b, radius)
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_b & gt_dil) / float(n_fg)
        recall = np.sum(gt_b & fg_dil) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _j_frame(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.sum(pred | gt)
    return 1.0 if union == 0 else np.sum(pred & gt) / union


def _scipy_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=_disk(radius))


def baseline(pred: np.ndarray, gt: np.ndarray, dilate=_scipy_dilate) -> tuple[np.ndarray, np.ndarray]:
    """[N, T, H, W] -> J, F [N, T], one frame at a time."""
    j = np.zeros(pred.shape[:2])
    f = np.zeros(pred.shape[:2])
    for n in range(pred.shape[0]):
        for t in range(pred.shape[1]):
            j[n, t] = _j_frame(pred[n, t], gt[n, t])
            f[n, t] = _f_frame(pred[n, t], gt[n, t], dilate)
    return j, f


# --------------------------------------------------------------------------------------------------------- data


def make_sequence(objects: int, frames: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    gt = np.zeros((objects, frames, height, width), bool)
    pred = np.zeros_like(gt)
    for n in range(objects):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.08, 0.25) * height, rng.uniform(0.05, 0.2) * width
        vy, vx = rng.uniform(-2, 2, size=2)
        for t in range(frames):
            y, x = cy + vy * t, cx + vx * t
            gt[n, t] = ((yy - y) / ry) ** 2 + ((xx - x) / rx) ** 2 <= 1
            dy, dx = rng.integers(-6, 7, size=2)
            p = ((yy - y - dy) / (ry * rng.uniform(0.9, 1.1))) ** 2 + ((xx - x - dx) / rx) ** 2 <= 1
            p ^= rng.random((height, width)) < 0.0005  # a few stray pixels
            pred[n, t] = p
    return pred, gt


def _median_times(fns: dict, repeats: dict) -> dict:
    """Run each function ``repeats[name]`` times, in turn, and return ``{name: (median seconds, last output)}``."""
    times = {name: [] for name in fns}
    outputs = {}
    for i in range(max(repeats.values())):
        for name, fn in fns.items():
            if i < repeats[name]:
                start = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(times[name])), outputs[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--repeat", type=int, default=5, help="runs per implementation; the median is reported")
    parser.add_argument("--scipy-repeat", type=int, default=1, help="runs of the (slow) NumPy+SciPy baseline")
    parser.add_argument("--opencv-site", default=None, help="a site-packages folder with OpenCV, appended to sys.path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.opencv_site:
        sys.path.append(args.opencv_site)
    try:
        import cv2
    except ImportError:
        cv2 = None

    pred, gt = make_sequence(args.objects, args.frames, args.height, args.width)
    print(f"J&F over {args.objects} objects x {args.frames} frames of {args.height}x{args.width} "
          f"(torch threads: {torch.get_num_threads()}, device: {args.device})")

    def ours() -> tuple[np.ndarray, np.ndarray]:
        if args.device == "cpu":
            return region_and_boundary(pred, gt)
        p, g = torch.from_numpy(pred).to(args.device), torch.from_numpy(gt).to(args.device)
        j, f = region_and_boundary(p, g)
        return j.cpu().numpy(), f.cpu().numpy()

    fns = {"lvseg (region_and_boundary)": ours}
    repeats = {"lvseg (region_and_boundary)": args.repeat}
    if cv2 is not None:
        def cv2_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
            return cv2.dilate(mask.astype(np.uint8), _disk(radius).astype(np.uint8)).astype(bool)

        fns["per-frame numpy + cv2.dilate"] = lambda: baseline(pred, gt, cv2_dilate)
        repeats["per-frame numpy + cv2.dilate"] = args.repeat
    else:
        print("OpenCV is not importable (it is not an lvseg dependency; see --opencv-site): "
              "comparing with the NumPy+SciPy baseline only")
    if args.scipy_repeat > 0:
        fns["per-frame numpy + scipy dilation"] = lambda: baseline(pred, gt)
        repeats["per-frame numpy + scipy dilation"] = args.scipy_repeat
    if len(fns) == 1:
        parser.error("no baseline to compare with: OpenCV is missing and --scipy-repeat is 0")

    ours()  # warm-up
    results = _median_times(fns, repeats)
    t_ours, (j_ours, f_ours) = results["lvseg (region_and_boundary)"]
    print(f"J&F-Mean {100 * (j_ours.mean() + f_ours.mean()) / 2:.3f}; median of the runs below "
          f"(wall clock; the machine may be shared)")
    print(f"{'implementation':34s} {'runs':>4s} {'seconds':>8s} {'ms/frame':>9s} {'lvseg speed-up':>15s} "
          f"{'identical J, F':>15s}")
    n_frames = args.objects * args.frames
    for name, (t, (j, f)) in results.items():
        same = np.array_equal(j, j_ours) and np.array_equal(f, f_ours)
        print(f"{name:34s} {repeats[name]:4d} {t:8.3f} {1000 * t / n_frames:9.2f} {t / t_ours:14.1f}x "
              f"{'yes' if same else 'NO':>15s}")
        assert same, f"{name} gives different J or F values than lvseg"


if __name__ == "__main__":
    main()

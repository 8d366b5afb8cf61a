"""How fine must a model's feature grid be to segment Shapes? The held-out J&F of the ground truth itself, passed
through an S x S grid.

    python benchmarks/shapes_grid_bound.py --data-root data/shapes96 --grids 6 12 24

For every held-out expression (the 100 videos the Shapes proofs score on, ``<data-root>-test``), each frame's
ground-truth mask is averaged over the cells of an S x S grid (``adaptive_avg_pool2d``: the share of each cell the
object covers), resized back to the frame with bilinear interpolation (``align_corners=False``, as the models'
logits are) and thresholded at 0.5, then scored with the same Ref-YouTube-VOS-style J&F as the proofs
(:func:`lvseg.train.engine.evaluate_jf` uses the same evaluator). The result is the score of a model that finds
the right object every time but whose mask is a smooth function of S x S cell values: a yardstick for models whose
mask decoder upsamples an S x S token grid (the tiny Locater: 12 x 12; the tiny VLP-RVOS: 12 x 12), not a strict
upper bound (a learned decoder can put sub-cell detail into its features). Prints one JSON line per grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def grid_bound(data_root: str | Path, grids: list[int], num_test: int = 100) -> list[dict]:
    """``[{"grid": S, "J&F", "J", "F", "expressions"}]`` for each S in ``grids`` (see the module docstring)."""
    import torch.nn.functional as F

    from lvseg.metrics.rvos import ExpressionJF
    from lvseg.train.presets import shapes_test_data

    data = shapes_test_data(Path(data_root), num_test)
    samples = [data[i] for i in range(len(data))]
    rows = []
    for grid in grids:
        evaluator = ExpressionJF("Shapes held-out")
        for s in samples:
            gt = s["masks"]  # bool [T, H, W]
            h, w = gt.shape[-2:]
            cells = F.adaptive_avg_pool2d(gt.float()[:, None], grid)
            smooth = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            evaluator.add(str(s["video"]), str(s["exp_id"]), (smooth > 0.5).numpy(), gt.numpy())
        rows.append({"grid": grid, **evaluator.summary(), "expressions": len(evaluator.per_expression)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data/shapes96", help="the Shapes root; held-out videos in <root>-test")
    p.add_argument("--grids", type=int, nargs="+", default=[6, 12, 24])
    p.add_argument("--num-test", type=int, default=100)
    args = p.parse_args(argv)
    if min(args.grids) < 1:
        p.error(f"--grids must be positive, got {args.grids}")
    for row in grid_bound(args.data_root, args.grids, args.num_test):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

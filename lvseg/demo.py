"""``lvseg demo``: the embedded model on a freshly generated Shapes video, offline, in seconds on a CPU.

It generates a Shapes video (:mod:`lvseg.data.shapes`), segments two referring expressions with the embedded
``referformer-tiny.shapes`` model (or ``--model``), writes an overlay video and a side-by-side PNG (input, prediction,
ground truth), and prints the J&F of each expression against the generator's exact masks.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidTextError
from .registry import DEFAULT_MODEL

__all__ = ["DemoResult", "run_demo", "main_cli"]

logger = logging.getLogger(__name__)

_COLORS = [(255, 255, 255), (255, 0, 255)]  # white, magenta: unlike every Shapes colour


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: per-expression ``(text, J, F)``, the files, and the time taken."""

    scores: list[tuple[str, float, float]]
    overlay: Path
    figure: Path
    seconds: float

    @property
    def mean_jf(self) -> float:
        return float(np.mean([(j + f) / 2 for _, j, f in self.scores]))


def _pick_expressions(video: Any, texts: Sequence[str] | None) -> list[tuple[str, set[int]]]:
    from .data.shapes import expression_semantics

    if texts:
        out = []
        for text in texts:
            ids = expression_semantics(" ".join(text.lower().split()), video.objects)
            if ids is None:
                raise InvalidTextError(
                    f"{text!r} is not a Shapes expression (grammar: 'the [leftmost|...] [small|big] "
                    "[colour] (shape|object) [moving left|...]'); use another or omit --text"
                )
            out.append((text, ids))
        return out
    chosen: list[tuple[str, set[int]]] = []
    for text, ids in video.expressions:  # single-object expressions of two different objects
        if len(ids) == 1 and all(set(ids) != c[1] for c in chosen):
            chosen.append((text, set(ids)))
        if len(chosen) == 2:
            break
    return chosen


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def run_demo(
    output_dir: str | Path = "lvseg-demo",
    *,
    model: Any = DEFAULT_MODEL,
    seed: int = 0,
    frames: int = 16,
    size: int = 96,
    texts: Sequence[str] | None = None,
    scale: int = 4,
    fps: float = 6.0,
) -> DemoResult:
    """Generate a Shapes video, segment two expressions and write ``overlay.mp4`` and ``side_by_side.png``.

    Args:
        output_dir: folder for the outputs.
        model: a registry name / folder (loaded on CPU) or a loaded model.
        seed: which generated video (any integer). The default, 0, is a video on which the bundled model
            scores close to its held-out average (72.8 vs 75.0 J&F), neither a best nor a worst case.
        frames, size: the video's length and (square) frame size in pixels.
        texts: expressions to segment (default: two generated ones about different objects).
        scale: upscaling of the written video and PNG (96-pixel frames are small to look at).
    """
    import torch

    from .data.shapes import make_video
    from .hub import load
    from .metrics.davis import boundary_f, region_similarity
    from .utils import ensure_folder
    from .video import overlay_frame, write_video

    start = time.perf_counter()
    if frames < 2 or size < 48:
        raise InvalidInputError("the demo needs frames >= 2 and size >= 48")
    out = ensure_folder(output_dir)  # an unwritable output folder fails now, not after the model has run
    net = load(model, device="cpu") if isinstance(model, (str, Path)) else model
    video, rgb, ids = make_video(seed, "demo", 0, frames, size, size)
    chosen = _pick_expressions(video, texts)
    if not chosen:
        raise InvalidInputError(f"video {seed} has no single-object expression; try another --seed")
    array = np.stack(rgb)  # [T, H, W, 3] uint8
    with torch.inference_mode():
        results = net.predict(array, [t for t, _ in chosen])
    results = results if isinstance(results, list) else [results]
    id_maps = np.stack(ids)  # [T, H, W] object ids
    scores = []
    preds = []
    for (text, obj_ids), res in zip(chosen, results):
        pred = res.to_numpy()
        gt = np.isin(id_maps, sorted(obj_ids))
        j = float(np.mean(region_similarity(pred, gt)))
        f = float(np.mean(boundary_f(pred, gt)))
        scores.append((text, j, f))
        preds.append(pred)

    captions = [t for t, _ in chosen]
    gts = [np.isin(id_maps, sorted(o)) for _, o in chosen]

    def overlay(t: int, masks: Sequence[np.ndarray], with_captions: bool) -> np.ndarray:
        big = [_upscale(m[t], scale) for m in masks]
        return overlay_frame(
            _upscale(array[t], scale), big, colors=_COLORS, alpha=0.45, captions=captions if with_captions else None
        )

    overlay_path = write_video((overlay(t, preds, True) for t in range(frames)), out / "overlay.mp4", fps=fps)
    # side by side: rows = 3 frames (first, middle, last); columns = input, prediction, ground truth
    from PIL import Image, ImageDraw

    rows = []
    for t in sorted({0, frames // 2, frames - 1}):
        rows.append(np.concatenate([_upscale(array[t], scale), overlay(t, preds, False), overlay(t, gts, False)], 1))
    grid = np.concatenate(rows, 0)
    header = 18 * (len(captions) + 1)
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), (0, 0, 0))
    canvas.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(canvas)
    width = size * scale
    for k, name in enumerate(("input", "prediction", "ground truth")):
        draw.text((k * width + 6, 2), name, fill=(255, 255, 255))
    for i, (text, j, f) in enumerate(scores):
        draw.text((6, 18 * (i + 1)), f"{text}   J&F {100 * (j + f) / 2:.1f}", fill=_COLORS[i % len(_COLORS)])
    figure = out / "side_by_side.png"
    from .utils import atomic_path

    with atomic_path(figure) as tmp:
        canvas.save(tmp, format="PNG")
    return DemoResult(scores, overlay_path, figure, time.perf_counter() - start)


def main_cli(argv: Sequence[str] | None = None) -> int:
    """``lvseg demo [-o DIR] [--model NAME] [--seed N] [--text EXPR --text EXPR]``."""
    p = argparse.ArgumentParser(
        prog="lvseg demo",
        description="Segment two expressions in a generated Shapes video "
        "with the embedded model (offline) and print J&F.",
    )
    p.add_argument("-o", "--output-dir", default="lvseg-demo")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--text", action="append", default=None, help="a Shapes expression (repeat for several)")
    args = p.parse_args(list(argv) if argv is not None else None)
    # the small demo model runs as fast on the pure-PyTorch attention op, and that needs no compile step
    # (set for this call only: `main_cli` also runs inside other processes, e.g. `lvseg.cli.main(["demo"])`)
    previous = os.environ.get("LVSEG_MSDA_BACKEND")
    os.environ.setdefault("LVSEG_MSDA_BACKEND", "reference")
    try:
        result = run_demo(args.output_dir, model=args.model, seed=args.seed, frames=args.frames, texts=args.text)
    finally:
        if previous is None:
            os.environ.pop("LVSEG_MSDA_BACKEND", None)
    for text, j, f in result.scores:
        print(f"{text!r}: J&F {100 * (j + f) / 2:.1f}  (J {100 * j:.1f}, F {100 * f:.1f})")
    print(f"mean J&F {100 * result.mean_jf:.1f} in {result.seconds:.1f} s")
    print(f"wrote {result.overlay} and {result.figure}")
    return 0

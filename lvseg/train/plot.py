"""A PNG of the training curves: matplotlib when installed, otherwise a plain Pillow line chart."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils import atomic_path

__all__ = ["plot_curves"]

logger = logging.getLogger(__name__)

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _series(history: Sequence[dict[str, Any]]) -> list[tuple[str, list[tuple[float, float]]]]:
    train = [(r["step"], r["loss"]) for r in history if r.get("kind") == "train" and "loss" in r]
    evals = [(r["step"], r["J&F"]) for r in history if r.get("kind") == "eval" and "J&F" in r]
    return [(name, pts) for name, pts in (("train loss", train), ("val J&F (%)", evals)) if pts]


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Write the loss (and validation J&F) curves of ``history`` to ``path``; None when there is nothing to plot."""
    panels = _series(history)
    if not panels:
        return None
    path = Path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(panels, path)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _plot_pillow(panels: list[tuple[str, list[tuple[float, float]]]], path: Path) -> Path:
    from PIL import Image, ImageDraw

    pw, ph, margin = 420, 300, 45
    img = Image.new("RGB", (pw * len(panels), ph), "white")
    draw = ImageDraw.Draw(img)
    for k, (name, pts) in enumerate(panels):
        x0 = k * pw
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xmin, xmax = min(xs), max(xs)
        ymin, ymax = min(ys), max(ys)
        if xmax == xmin:
            xmax = xmin + 1
        if ymax == ymin:
            ymax = ymin + 1

        def to_px(
            x: float, y: float, x0: float = x0, bounds: tuple[float, float, float, float] = (xmin, xmax, ymin, ymax)
        ) -> tuple[float, float]:
            x_lo, x_hi, y_lo, y_hi = bounds
            px = x0 + margin + (x - x_lo) / (x_hi - x_lo) * (pw - 2 * margin)
            py = ph - margin - (y - y_lo) / (y_hi - y_lo) * (ph - 2 * margin)
            return px, py

        draw.rectangle([x0 + margin, margin, x0 + pw - margin, ph - margin], outline=(120, 120, 120))
        draw.text((x0 + margin, 12), name, fill="black")
        draw.text((x0 + 4, margin - 6), f"{ymax:.3g}", fill="black")
        draw.text((x0 + 4, ph - margin - 6), f"{ymin:.3g}", fill="black")
        draw.text((x0 + margin, ph - margin + 8), f"step {xmin:g}", fill="black")
        draw.text((x0 + pw - margin - 60, ph - margin + 8), f"step {xmax:g}", fill="black")
        line = [to_px(x, y) for x, y in pts]
        if len(line) > 1:
            draw.line(line, fill=_COLORS[k % len(_COLORS)], width=2)
        for px, py in line if len(line) < 50 else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=_COLORS[k % len(_COLORS)])
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path

"""What every benchmark evaluator shares: a name, the official source it reproduces, a summary and a table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, cast

import numpy as np
import torch

from ..errors import InvalidInputError

__all__ = ["Evaluator", "format_table", "to_numpy_masks"]


def to_numpy_masks(x: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """A torch/numpy mask array as a numpy bool array with the expected number of dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        raise InvalidInputError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}")
    return arr != 0


def format_table(
    rows: Mapping[str, Mapping[str, float]] | Mapping[str, float], digits: int = 2, title: str = ""
) -> str:
    """A plain-text table: one row per key of ``rows`` (or a single row), one column per metric."""
    table: dict[str, Mapping[str, float]]
    if rows and all(isinstance(v, (int, float)) for v in rows.values()):
        table = {"": cast(Mapping[str, float], rows)}
    else:
        table = dict(cast(Mapping[str, Mapping[str, float]], rows))
    columns: list[str] = []
    for row in table.values():
        for key in row:
            if key not in columns:
                columns.append(key)
    header = ["", *columns] if any(table) else columns
    body = []
    for name, row in table.items():
        cells = [f"{row[c]:.{digits}f}" if c in row else "-" for c in columns]
        body.append([name, *cells] if any(table) else cells)
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


class Evaluator:
    """Base of the benchmark evaluators.

    A subclass collects predictions with its own ``add...`` methods (array level, documented per protocol), and
    :meth:`add_sample` adapts one dataset sample plus the model's output for :func:`lvseg.evaluate`.
    :meth:`summary` returns the benchmark's headline numbers **in percent**, computed as the official code does.
    """

    benchmark: ClassVar[str] = ""
    source: ClassVar[str] = ""  # the official code this reproduces
    digits: ClassVar[int] = 2  # how many decimals the official tool prints (of the percentage)

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:  # pragma: no cover
        """Add one dataset sample and the model's masks bool [T, H, W] and scores float [T] for it."""
        raise NotImplementedError

    def summary(self) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def format_table(self) -> str:
        return format_table(self.summary(), digits=self.digits, title=f"{self.benchmark} ({self.source})")

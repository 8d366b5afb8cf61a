"""What the Shapes training benchmarks (train_shapes_{vlp_rvos,locater,lavt}.py) write: each run's results.json and
the side-by-side summary of several runs. Imported by those scripts (they run from this folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lvseg.utils import atomic_write_text


def write_run_results(out: Path, result: dict[str, Any], eval_only: bool) -> dict[str, Any]:
    """Write one run's ``results.json`` atomically. A re-score (``eval_only``) measures no training time: it keeps
    the ``train_seconds`` (and the training ``threads``) of the results.json it replaces, or null when none."""
    path = Path(out) / "results.json"
    result = dict(result)
    if eval_only:
        earlier: dict[str, Any] = {}
        if path.is_file():
            try:
                earlier = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                earlier = {}
        result["train_seconds"] = earlier.get("train_seconds")
        if "threads" in earlier:
            result["threads"] = earlier["threads"]
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def kinds_side_by_side(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{kind: {run: J&F}}`` from each run's ``by_kind`` (rounded to 0.1; a run without that kind is left out)."""
    kinds = sorted(set().union(*((r.get("by_kind") or {}) for r in results.values())))
    return {
        kind: {name: round(r["by_kind"][kind]["J&F"], 1) for name, r in results.items() if kind in (r.get("by_kind") or {})}
        for kind in kinds
    }


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """The summary of several runs, atomically, as ``<out>/results.json``."""
    atomic_write_text(Path(out) / "results.json", json.dumps(summary, indent=2) + "\n")

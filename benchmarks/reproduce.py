"""Reproduce the paper tables: the paper's number beside the measured one, for every registry entry that reports one.

    python benchmarks/reproduce.py --model "referformer-*" --dataset ref-davis17 --root data/ref-davis \\
        [--split val] [--output runs/reproduce] [--davis-root DIR] [--max-samples N] [--device cuda]
    python benchmarks/reproduce.py --model "*" --dataset a2d-sentences --list   # what would be compared

Each model is evaluated with :func:`lvseg.evaluate` (the benchmark's official protocol); with ``--output`` the
predictions are stored per model and an interrupted run continues where it stopped. Entries whose weights are not
published yet are listed with their paper numbers and the command that converts them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

# benchmark name on the command line -> (name used in registry PaperMetric.dataset, lvseg.evaluate protocol)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "ref-youtube-vos": ("Ref-YouTube-VOS", "ytvos"),
    "mevis": ("MeViS", "mevis"),
    "ref-davis17": ("Ref-DAVIS17", "refdavis"),
    "a2d-sentences": ("A2D-Sentences", "a2d"),
    "jhmdb-sentences": ("JHMDB-Sentences", "jhmdb"),
    "a2d-s+": ("A2D-S+", "a2d+"),
    "refcoco": ("RefCOCO", "refcoco"),
    "refcoco+": ("RefCOCO+", "refcoco"),
    "refcocog": ("RefCOCOg", "refcoco"),
}

# how papers name a metric -> the key lvseg.evaluate returns
METRIC_KEYS: dict[str, str] = {
    "J&F": "J&F", "J": "J", "F": "F",
    "mAP": "mAP 0.5:0.95", "AP": "mAP 0.5:0.95", "AP50": "AP 0.5", "AP 0.5": "AP 0.5", "AP75": "AP 0.75",
    "oIoU": "overall_iou", "overall IoU": "overall_iou", "Overall IoU": "overall_iou",
    "mIoU": "mean_iou", "mean IoU": "mean_iou", "Mean IoU": "mean_iou",
    "P@0.5": "P@0.5", "P@0.6": "P@0.6", "P@0.7": "P@0.7", "P@0.8": "P@0.8", "P@0.9": "P@0.9",
}


def _measured_key(metric: str, protocol: str) -> str:
    if protocol == "a2d+" and metric == "mAP":
        return "mAP"  # Locater's "mAP" is the mean of its five precisions
    return METRIC_KEYS.get(metric, metric)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="*", help="registry name or fnmatch pattern (default: all)")
    parser.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--root", help="the dataset's root folder (official layout)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--output", default=None, help="folder for per-model predictions (resumable)")
    parser.add_argument("--davis-root", default=None, help="Ref-DAVIS17: folder with Annotations_unsupervised")
    parser.add_argument("--max-samples", type=int, default=None, help="smoke test on the first N samples")
    parser.add_argument("--device", default=None)
    parser.add_argument("--list", action="store_true", help="only list the entries and their paper numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from lvseg.errors import LVSegError, WeightsNotPublishedError
    from lvseg.registry import get_entry, list_models

    benchmark, protocol = BENCHMARKS[args.dataset]
    entries = []
    for name in list_models(args.model):
        metrics = [m for m in get_entry(name).paper_metrics if m.dataset == benchmark]
        if metrics:
            entries.append((name, metrics))
    if not entries:
        print(f"no registry entry matching {args.model!r} reports a {benchmark} number")
        return 1

    rows: list[tuple[str, str, str, str, str, str]] = []
    dataset: Any = None
    for name, metrics in entries:
        measured: dict[str, Any] = {}
        status = ""
        if not args.list:
            if args.root is None:
                parser.error("--root is required unless --list is given")
            try:
                import lvseg
                from lvseg.metrics.evaluate import build_dataset

                if dataset is None:
                    dataset = build_dataset(args.dataset, args.root, args.split)
                kwargs = {"device": args.device} if args.device else {}
                model = lvseg.load(name, **kwargs)
                output = Path(args.output) / name if args.output else None
                measured = lvseg.evaluate(model, dataset, protocol=protocol, output_dir=output,
                                          davis_root=args.davis_root, max_samples=args.max_samples)
            except WeightsNotPublishedError:
                entry = get_entry(name)
                status = (
                    f"no official weights: lvseg train --preset {entry.train_preset}"
                    if entry.train_preset
                    else f"weights not published: lvseg convert {entry.family} <official.pth>"
                )
            except LVSegError as exc:
                status = f"error: {exc}"
        for m in metrics:
            key = _measured_key(m.metric, protocol)
            value = measured.get(key)
            if "submission" in measured:
                shown, diff = "server", f"upload {measured['submission']}"
            elif isinstance(value, (int, float)):
                shown, diff = f"{value:.2f}", f"{value - m.value:+.2f}"
            else:
                shown, diff = "-", status or ("not run (--list)" if args.list else "not computed")
            rows.append((name, f"{m.split} {m.metric}", f"{m.value:g}", shown, diff, m.source))

    header = ("model", f"{benchmark} metric", "paper", "measured", "difference / note", "paper source")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.max_samples:
        print(f"\n(only the first {args.max_samples} samples: measured numbers are not the benchmark's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

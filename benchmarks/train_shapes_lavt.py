"""Does LAVT learn language? A tiny LAVT image model trained on Shapes frames, against its text-blind control.

    python benchmarks/train_shapes_lavt.py --output-dir runs/lavt-shapes --both     # model and control side by side
    python benchmarks/train_shapes_lavt.py --output-dir runs/lavt-shapes/model            # the model only
    python benchmarks/train_shapes_lavt.py --output-dir runs/lavt-shapes/control --control  # shuffled expressions
    python benchmarks/train_shapes_lavt.py --output-dir runs/lavt-shapes --both --eval-only  # score finished runs

Recipe: the ``lavt-tiny-shapes`` preset (a ~1.1 M-parameter LAVT from scratch: Swin of width 16, 2-layer BERT of
width 64 on a WordPiece vocabulary of the Shapes words; AdamW 1e-3, batch 8, 3200 steps, LR x0.1 at 3/4).
Data: the Shapes of ``benchmarks/train_shapes.py`` (seed 0 under ``--data-root``: 1200 training videos, 60 for
model selection; 100 held-out videos, seed 1, under ``<data-root>-test``; 8 frames of 96x96), restricted to the
expressions without a motion phrase (an image model sees one frame); training samples are single frames.
The control trains on the same samples with the expressions shuffled among them (``ShuffledExpressions``).

Score: the best checkpoint (by validation J&F) of each run on the held-out videos' non-motion expressions,
with the Ref-YouTube-VOS-style J&F evaluator of the Shapes tooling (every frame segmented independently).
``--both`` runs the two trainings as two processes with ``--threads`` threads each and prints both scores and
the gap; each run writes ``results.json`` into its folder (``<output-dir>/model``, ``<output-dir>/control``), with
the score of each kind of expression (``by_kind``, :func:`lvseg.data.shapes.expression_kind`), and the summary
lists the kinds side by side (``by_kind_J&F``). ``--eval-only`` re-scores a finished run and keeps its training
time.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch
from shapes_report import kinds_side_by_side, write_run_results, write_summary


def best_of(run: Path) -> Path:
    """A finished run's best model (by valid J&F), or its final one when it kept no best."""
    return run / "best" if (run / "best").is_dir() else run / "final"


def run_one(args: argparse.Namespace) -> dict:
    """Train (unless ``--eval-only``) and score one run; returns its results (also written to results.json)."""
    import lvseg
    from lvseg.data.shapes import expression_kind
    from lvseg.train.engine import evaluate_jf
    from lvseg.train.presets import (
        ExpressionSubset,
        ShuffledExpressions,
        get_preset,
        is_motion_expression,
        lavt_shapes_data,
        shapes_test_data,
    )

    root = Path(args.data_root)
    train_ds, val_ds = lavt_shapes_data(root)
    test_ds = ExpressionSubset(shapes_test_data(root, args.num_test), lambda text: not is_motion_expression(text))
    out = Path(args.output_dir)
    t0 = time.time()
    if not args.eval_only:
        if args.control:
            train_ds = ShuffledExpressions(train_ds, seed=0)
        options: dict = {"resume": args.resume, "progress": False}
        if args.max_steps is not None:
            options.update(max_steps=args.max_steps, lr_drop_steps=(args.max_steps * 3 // 4,))
        preset = get_preset("lavt-tiny-shapes")
        lvseg.train(preset.model, train_ds, val_ds, out, preset="lavt-tiny-shapes", **options)
    train_s = time.time() - t0
    best = best_of(out)
    model = lvseg.load(str(best), device="cpu")
    metrics = evaluate_jf(model, test_ds, progress=False, group_by=expression_kind)
    log = out / "log.jsonl"
    steps = None
    if log.is_file():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = max((r.get("step", 0) for r in records), default=None)
    result = {"run": str(out), "control": args.control, "checkpoint": str(best), "steps": steps,
              "test_expressions": metrics["num_expressions"], "J&F": metrics["J&F"], "J": metrics["J"],
              "F": metrics["F"], "by_kind": metrics["groups"],
              "parameters": sum(p.numel() for p in model.parameters()),
              "train_seconds": None if args.eval_only else round(train_s, 1), "threads": args.threads}
    return write_run_results(out, result, args.eval_only)


def run_both(args: argparse.Namespace, argv: list[str]) -> int:
    """The model and its control as two processes side by side; prints both scores and the gap."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    passed = [a for a in argv if a != "--both"]
    i = passed.index("--output-dir") if "--output-dir" in passed else None
    if i is not None:
        del passed[i : i + 2]
    passed = [a for a in passed if not a.startswith("--output-dir=")]
    procs = {}
    for name in ("model", "control"):
        cmd = [sys.executable, __file__, "--output-dir", str(out / name), *passed]
        if name == "control":
            cmd.append("--control")
        (out / name).mkdir(parents=True, exist_ok=True)
        log = open(out / name / "stdout.log", "a")  # closed when the process ends
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    codes = {}
    for name, (proc, log) in procs.items():
        codes[name] = proc.wait()
        log.close()
    if any(codes.values()):
        print(f"a run failed: exit codes {codes}; see {out}/*/stdout.log", file=sys.stderr)
        return 1
    results = {name: json.loads((out / name / "results.json").read_text()) for name in procs}
    summary = {"model": results["model"], "control": results["control"],
               "gap_J&F": results["model"]["J&F"] - results["control"]["J&F"]}
    summary["by_kind_J&F"] = kinds_side_by_side(results)
    write_summary(out, summary)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--data-root", default="data/shapes96")
    p.add_argument("--both", action="store_true", help="train the model and its control side by side")
    p.add_argument("--control", action="store_true", help="train on shuffled expressions (text-blind control)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's 3200 steps (LR drop at 3/4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--eval-only", action="store_true", help="score existing runs' best models on test")
    args = p.parse_args(argv)
    if args.both:
        return run_both(args, argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(run_one(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

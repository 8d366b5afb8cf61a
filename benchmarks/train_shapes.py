"""Reproduce the embedded ``referformer-tiny.shapes`` model from scratch on CPU, and its text-blind control.

    python benchmarks/train_shapes.py --output-dir runs/shapes            # the model (about 2 h 10 min on 1 CPU core)
    python benchmarks/train_shapes.py --output-dir runs/shapes-blind --control   # shuffled expressions
    python benchmarks/train_shapes.py --output-dir runs/shapes --resume   # continue an interrupted run
    python benchmarks/train_shapes.py --output-dir runs/shapes --export lvseg/assets/referformer-tiny-shapes

Data: Shapes generated with seed 0 under ``--data-root`` (train: 1200 videos, valid: 60 for model selection,
and 100 more held-out videos (seed 1) under ``<data-root>-test`` for the reported number), 8 frames of 96x96.

The recipe has three stages:

1. backbone pre-training on the Shapes attributes and 2. ReferFormer training with stride-4 masks: the
   ``referformer-tiny-shapes`` preset, run in ``<output-dir>``;
3. its best model grows the image-guided stride-1 mask head and trains on: the ``referformer-tiny-shapes-hr``
   preset, run in ``<output-dir>/refine`` (``--no-refine`` stops after stage 2).

At the end the best checkpoint (by valid J&F) of each stage run is scored on the test split with the
Ref-YouTube-VOS-style J&F evaluator; the numbers are written to ``<output-dir>/results.json`` (top level: the
last stage, the model that ``--export`` copies).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch  # noqa: E402


def best_of(run: Path) -> Path:
    """A finished run's best model (by valid J&F), or its final one when it kept no best."""
    return run / "best" if (run / "best").is_dir() else run / "final"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--data-root", default="data/shapes96")
    p.add_argument("--control", action="store_true", help="train on shuffled expressions (text-blind control)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's 13000 steps")
    p.add_argument("--prepare-steps", type=int, default=None,
                   help="override the 6000 steps of stage 1 (backbone pre-training on the Shapes attributes)")
    p.add_argument("--refine-steps", type=int, default=None,
                   help="override the 12000 steps of stage 3 (training on with the stride-1 mask head; its LR drop "
                        "moves to 3/4 of them)")
    p.add_argument("--no-refine", action="store_true", help="stop after stage 2 (masks at stride 4)")
    p.add_argument("--msda-backend", default="auto", choices=("auto", "reference", "cpu"),
                   help="deformable attention backend: 'auto' uses the compiled CPU op when it builds (faster), "
                        "'reference' the pure-PyTorch path (no compiler; bit-identical runs on any machine)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--export", default=None, help="copy the best model to this Hub-format folder")
    p.add_argument("--eval-only", action="store_true", help="score an existing run's best model on test")
    args = p.parse_args(argv)
    if args.msda_backend != "auto":
        os.environ["LVSEG_MSDA_BACKEND"] = args.msda_backend

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import lvseg
    from lvseg.train.engine import evaluate_jf
    from lvseg.train.presets import (
        ShuffledExpressions,
        get_preset,
        shapes_data,
        shapes_refine_schedule,
        shapes_test_data,
    )

    root = Path(args.data_root)
    train_ds, val_ds = shapes_data(root)
    # the held-out test videos live in their own root (as a "valid" split, seed 1): a Ref-YouTube-VOS root's
    # test meta file would remove same-named videos from its valid split
    test_ds = shapes_test_data(root, args.num_test)
    out = Path(args.output_dir)
    refine_dir = out / "refine"
    t0 = time.time()
    if not args.eval_only:
        if args.control:
            train_ds = ShuffledExpressions(train_ds, seed=0)
        options = {"resume": args.resume}
        if args.max_steps is not None:
            options["max_steps"] = args.max_steps
        if args.prepare_steps is not None:
            options["prepare_steps"] = args.prepare_steps
        preset = get_preset("referformer-tiny-shapes")
        # stages 1 + 2; data_root: stage 1 (backbone pre-training on the Shapes attributes) reads the train split
        lvseg.train(preset.model, train_ds, val_ds, out, preset="referformer-tiny-shapes", data_root=root, **options)
        if not args.no_refine:
            # stage 3: the stage-2 model grows the stride-1 mask head (the preset's model_overrides) and trains on
            options = {"resume": args.resume}
            if args.refine_steps is not None:
                options.update(shapes_refine_schedule(args.refine_steps))
            lvseg.train(str(best_of(out)), train_ds, val_ds, refine_dir, preset="referformer-tiny-shapes-hr",
                        **options)
    train_s = time.time() - t0
    stages = {"stage2": best_of(out)}
    if not args.no_refine and (refine_dir / "final").is_dir():
        stages["stage3"] = best_of(refine_dir)
    scores = {}
    for stage, folder in stages.items():
        model = lvseg.load(str(folder), device="cpu")
        metrics = evaluate_jf(model, test_ds, progress=True)
        scores[stage] = {"checkpoint": str(folder), "J&F": metrics["J&F"], "J": metrics["J"], "F": metrics["F"]}
    best = list(stages.values())[-1]  # the last stage run; `model` and `metrics` are its own
    params = sum(p.numel() for p in model.parameters())
    size_mb = (best / "model.safetensors").stat().st_size / 2**20
    stage1 = json.loads((out / "prepare.json").read_text()) if (out / "prepare.json").is_file() else None
    result = {"run": str(out), "control": args.control, "checkpoint": str(best), "backbone_pretraining": stage1,
              "test_expressions":
              metrics["num_expressions"], "J&F": metrics["J&F"], "J": metrics["J"], "F": metrics["F"],
              "stages": scores, "parameters": params, "weights_MB": round(size_mb, 2),
              "train_seconds": round(train_s, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.export:
        from lvseg.hub import save_pretrained
        from lvseg.registry import get_entry

        dst = Path(args.export)
        if dst.exists():
            shutil.rmtree(dst)
        save_pretrained(model, dst, entry=get_entry("referformer-tiny.shapes"))
        for f in dst.iterdir():
            f.chmod(0o644)  # package data: readable by everyone once installed
        print(f"exported {best} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

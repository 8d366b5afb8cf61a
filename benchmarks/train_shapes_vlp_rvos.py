"""Does VLP-RVOS use its frozen vision-language space? The tiny Shapes VLP-RVOS on the frozen Shapes CLIP, against
the same recipe's text-blind control and the same head on a randomly initialised frozen backbone.

    python benchmarks/train_shapes_clip.py --output-dir runs/shapes-clip                   # the frozen backbone
    python benchmarks/train_shapes_vlp_rvos.py --output-dir runs/vlp-shapes --backbone runs/shapes-clip --all
    python benchmarks/train_shapes_vlp_rvos.py --output-dir runs/vlp-shapes/model --backbone runs/shapes-clip
    python benchmarks/train_shapes_vlp_rvos.py --output-dir runs/vlp-shapes/control --backbone runs/shapes-clip \\
        --variant control                                                # expressions shuffled among samples
    python benchmarks/train_shapes_vlp_rvos.py --output-dir runs/vlp-shapes/random --variant random
    python benchmarks/train_shapes_vlp_rvos.py --output-dir runs/vlp-shapes --backbone runs/shapes-clip --all \\
        --eval-only                                                      # score finished runs

Recipe: the ``vlp-rvos-tiny-shapes`` preset (:func:`lvseg.train.vlp_rvos_presets.build_vlp_shapes_tiny`: every
added module of VLP-RVOS at a CPU size on a frozen CLIP-style dual encoder with the towers of
:class:`lvseg.train.shapes_clip.ShapesClipConfig`; only the added modules are trained; samples of two 4-frame clips,
the first clip's prompts carried into the second; AdamW, batch 2, LR x0.1 at 3/4 of the steps).
Data: the Shapes of ``benchmarks/train_shapes.py`` (seed 0 under ``--data-root``: 1200 training videos, 60 for
model selection; 100 held-out videos, seed 1, under ``<data-root>-test``; 8 frames of 96x96), every expression.

Variants: ``model`` (backbone = the contrastively pre-trained Shapes CLIP, ``--backbone``), ``control`` (the same,
trained on expressions shuffled among the samples: ``ShuffledExpressions``, text-blind) and ``random`` (the same
head on a randomly initialised frozen backbone of the same sizes). Score: each run's best checkpoint (by validation
J&F) on the held-out videos with the Ref-YouTube-VOS-style J&F of the Shapes tooling (whole videos, clip by clip,
prompts carried). ``--all`` runs the three as three processes with ``--threads`` threads each, writes
``<output-dir>/results.json`` and prints the three numbers and the gaps.
Each ``results.json`` also holds the score of each kind of expression (``by_kind``,
:func:`lvseg.data.shapes.expression_kind`: ``color``, ``color_shape``, ``shape_motion``, ``position``, ...), and the
summary lists the kinds of the three runs side by side (``by_kind_J&F``).
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

VARIANTS = ("model", "control", "random")


def best_of(run: Path) -> Path:
    """A finished run's best model (by valid J&F), or its final one when it kept no best."""
    return run / "best" if (run / "best").is_dir() else run / "final"


def run_one(args: argparse.Namespace) -> dict:
    """Train (unless ``--eval-only``) and score one variant; returns its results (also written to results.json)."""
    import lvseg
    from lvseg.data.shapes import expression_kind
    from lvseg.train.engine import evaluate_jf
    from lvseg.train.presets import ShuffledExpressions, shapes_test_data
    from lvseg.train.vlp_rvos_presets import build_vlp_shapes_tiny, clip_patch_size, vlp_shapes_data

    if args.variant != "random" and args.backbone is None:
        raise SystemExit(f"--variant {args.variant} needs --backbone (the Shapes CLIP folder)")
    root = Path(args.data_root)
    train_ds, val_ds = vlp_shapes_data(root)
    test_ds = shapes_test_data(root, args.num_test)
    out = Path(args.output_dir)
    t0 = time.time()
    if not args.eval_only:
        if args.variant == "control":
            train_ds = ShuffledExpressions(train_ds, seed=0)
        head: dict = {} if args.cube_size is None else {"cube_size": tuple(args.cube_size)}
        if args.volume_position:
            head["volume_position"] = True
        if args.volume_motion:
            head["volume_motion"] = args.volume_motion
        if args.motion_before_fusion:
            head["motion_before_fusion"] = True
        if args.hidden_dim is not None:  # the head's width; its feed-forward layers stay twice as wide
            head.update(hidden_dim=args.hidden_dim, ffn_dim=2 * args.hidden_dim)
        # the head's random initialisation seeded, as lvseg.train seeds before building a preset's model (runs
        # before 2026-12-08 did not seed it: two runs of one command started from different heads)
        torch.manual_seed(args.seed)
        if args.variant == "random":  # the same sizes as the CLIP of the other variants (its patch)
            patch = args.patch
            if patch is None and args.backbone is not None:
                patch = clip_patch_size(args.backbone)
            model = build_vlp_shapes_tiny(None, patch=patch, **head)
        else:
            model = build_vlp_shapes_tiny(args.backbone, patch=args.patch, **head)
        options: dict = {"resume": args.resume, "progress": False}
        if args.max_steps is not None:
            options.update(max_steps=args.max_steps, lr_drop_steps=(args.max_steps * 3 // 4,))
        lvseg.train(model, train_ds, val_ds, out, preset="vlp-rvos-tiny-shapes", **options)
    train_s = time.time() - t0
    best = best_of(out)
    model = lvseg.load(str(best), device="cpu")
    metrics = evaluate_jf(model, test_ds, progress=False, group_by=expression_kind)
    log = out / "log.jsonl"
    steps = None
    if log.is_file():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = max((r.get("step", 0) for r in records), default=None)
    result = {"run": str(out), "variant": args.variant, "backbone": args.backbone, "checkpoint": str(best),
              "steps": steps, "test_expressions": metrics["num_expressions"], "J&F": metrics["J&F"],
              "J": metrics["J"], "F": metrics["F"], "by_kind": metrics["groups"],
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "train_seconds": None if args.eval_only else round(train_s, 1), "threads": args.threads}
    return write_run_results(out, result, args.eval_only)


def run_all(args: argparse.Namespace, argv: list[str]) -> int:
    """The three variants as three processes side by side; prints the three scores and the gaps."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    passed = [a for a in argv if a != "--all"]
    i = passed.index("--output-dir") if "--output-dir" in passed else None
    if i is not None:
        del passed[i : i + 2]
    passed = [a for a in passed if not a.startswith("--output-dir=")]
    procs = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--output-dir", str(out / name), *passed, "--variant", name]
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
    print(json.dumps(summarise(out), indent=2))
    return 0


def summarise(out: Path) -> dict:
    """The three runs' results.json side by side, with the gaps the proof asks for; written to results.json."""
    results = {name: json.loads((out / name / "results.json").read_text()) for name in VARIANTS}
    summary = {**results, "gap_vs_text_blind": results["model"]["J&F"] - results["control"]["J&F"],
               "gap_vs_random_backbone": results["model"]["J&F"] - results["random"]["J&F"]}
    summary["by_kind_J&F"] = kinds_side_by_side(results)
    write_summary(out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--data-root", default="data/shapes96")
    p.add_argument("--backbone", default=None, help="the Shapes CLIP folder (benchmarks/train_shapes_clip.py)")
    p.add_argument("--variant", choices=VARIANTS, default="model")
    p.add_argument("--all", action="store_true", help="train the three variants side by side")
    p.add_argument("--summarise", action="store_true", help="only combine the three finished runs' results.json")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's steps (LR drop at 3/4)")
    p.add_argument("--patch", type=int, default=None,
                   help="image patch size (default: the --backbone CLIP's, else the recipe's 8; 6 gives a 16x16 grid)")
    p.add_argument("--cube-size", type=int, nargs=3, default=None, metavar=("T", "H", "W"),
                   help="cube-frame attention cube (default: the preset's 2 4 4; 4 4 4 spans the 4-frame clip)")
    p.add_argument("--volume-position", action="store_true",
                   help="add the (row, column, frame) sine embedding to the fused volume "
                        "(VLPRVOSConfig.volume_position)")
    p.add_argument("--volume-motion", type=int, default=0, metavar="R",
                   help="add each token's correlation with the previous frame in a (2R+1)^2 window, projected "
                        "(VLPRVOSConfig.volume_motion; default 0: off)")
    p.add_argument("--motion-before-fusion", action="store_true",
                   help="compute --volume-motion on the visual tokens before the VL fusion "
                        "(VLPRVOSConfig.motion_before_fusion)")
    p.add_argument("--hidden-dim", type=int, default=None,
                   help="width of the added modules (VLPRVOSConfig.hidden_dim; default: the tiny model's 32), their "
                   "feed-forward layers twice as wide")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's (and the random backbone's) initialisation")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--eval-only", action="store_true", help="score existing runs' best models on test")
    args = p.parse_args(argv)
    if args.summarise:
        print(json.dumps(summarise(Path(args.output_dir)), indent=2))
        return 0
    if args.all:
        return run_all(args, argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(run_one(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does Locater learn language? A tiny Locater trained on Shapes clips, against its text-blind control.

    python benchmarks/train_shapes_locater.py --output-dir runs/locater-shapes --both     # model and control
    python benchmarks/train_shapes_locater.py --output-dir runs/locater-shapes/model             # the model only
    python benchmarks/train_shapes_locater.py --output-dir runs/locater-shapes/control --control  # shuffled texts
    python benchmarks/train_shapes_locater.py --output-dir runs/locater-shapes --both --eval-only  # score runs

Recipe: the ``locater-tiny-shapes`` preset (a 545,079-parameter Locater from scratch: a 2-block ViT of width 64
on 16-pixel patches of the frames resized to 192 x 192, a 12x12 grid; a 1-layer BiLSTM over a WordPiece
vocabulary of the Shapes words; both memories unrolled over each training clip; balanced BCE + dice on the main
and auxiliary decoders; AdamW 1e-3, batch 4, 3,000 steps, LR x0.1 at 3/4), with ``--max-steps`` to size the run
to the CPU at hand. ``--pretrain-steps N`` (an experiment, not the preset: measured to lower the gap, see
docs/models/locater.md) first pre-trains the ViT on the Shapes attributes (shape, colour and size of the object
under each patch, ``lvseg.train.shapes_pretrain``; no text) once, into ``<output-dir>/pretrained`` at twice
``--threads``, and starts the model and the control from its result. ``--ground-steps N`` (an experiment too) then
pre-trains the ViT and the text encoder together with a contrastive and a dense text-to-patch grounding loss
(``lvseg.train.shapes_grounding``, the stage that made the tiny VLP-RVOS's frozen backbone ground shape) into
``<output-dir>/grounded``; ``--vit-lr`` / ``--text-lr`` set the two encoders' learning rates (0 keeps them frozen).
Data: the Shapes of ``benchmarks/train_shapes.py`` (seed 0 under ``--data-root``: 1200 training videos, 60 for
model selection; 100 held-out videos, seed 1, under ``<data-root>-test``; 8 frames of 96x96), all expressions
(motion phrases included: Locater is a video model and its memories see the earlier frames); training samples are
clips of 4 consecutive frames. The control trains on the same samples with the expressions shuffled among them
(``ShuffledExpressions``), so it can learn objectness and the data's priors but no grounding.

Score: the best checkpoint (by validation J&F) of each run on the held-out videos, with the Ref-YouTube-VOS-style
J&F evaluator of the Shapes tooling (each video streamed through Locater's memories frame by frame).
``--both`` runs the two trainings as two processes with ``--threads`` threads each and prints both scores and
the gap; each run writes ``results.json`` into its folder (``<output-dir>/model``, ``<output-dir>/control``),
with the score of each kind of expression (``by_kind``, :func:`lvseg.data.shapes.expression_kind`: what the text
names, e.g. ``color_shape`` or ``shape_motion``); the summary lists the kinds side by side (``by_kind_J&F``).
"""

from __future__ import annotations

import argparse
import functools
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
        ShuffledExpressions,
        build_locater_shapes_tiny,
        get_preset,
        shapes_data,
        shapes_test_data,
    )

    root = Path(args.data_root)
    train_ds, val_ds = shapes_data(root)
    test_ds = shapes_test_data(root, args.num_test)
    out = Path(args.output_dir)
    t0 = time.time()
    if not args.eval_only:
        if args.control:
            train_ds = ShuffledExpressions(train_ds, seed=0)
        options: dict = {"resume": args.resume, "progress": False}
        if args.max_steps is not None:
            options.update(max_steps=args.max_steps, lr_drop_steps=(args.max_steps * 3 // 4,))
            options.update(eval_every=max(1, args.max_steps // 3), checkpoint_every=max(1, args.max_steps // 12))
        if args.lr is not None:
            options.update(lr=args.lr, lr_backbone=args.lr, lr_text_encoder=args.lr)
        groups = []
        if args.vit_lr is not None:  # the ViT (vision_encoder.*) at its own learning rate; 0 freezes it
            groups.append((r"vision_encoder\.", args.vit_lr))
        if args.text_lr is not None:  # the text encoder (lang_encoder.*) likewise
            groups.append((r"lang_encoder\.", args.text_lr))
        if groups:
            options.update(lr_groups=tuple(groups))
        preset = get_preset("locater-tiny-shapes")
        start = args.pretrained if args.pretrained else preset.model  # --pretrained: a ViT pre-trained first
        if args.image_size is not None:  # a finer token grid (built after lvseg.train seeds, as the preset's)
            start = functools.partial(build_locater_shapes_tiny, image_size=args.image_size)
        lvseg.train(start, train_ds, val_ds, out, preset="locater-tiny-shapes", **options)
    train_s = time.time() - t0
    best = best_of(out)
    model = lvseg.load(str(best), device="cpu")
    metrics = evaluate_jf(model, test_ds, progress=False, group_by=expression_kind)
    log = out / "log.jsonl"
    steps = None
    if log.is_file():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = max((r.get("step", 0) for r in records), default=None)
    stage1 = Path(args.pretrained or out) / "prepare.json"
    result = {"run": str(out), "control": args.control, "checkpoint": str(best), "steps": steps,
              "image_size": model.config.image_size, "grid": model.config.grid,
              "vit_pretraining": json.loads(stage1.read_text()) if stage1.is_file() else None, "vit_lr": args.vit_lr,
              "text_lr": args.text_lr,
              "test_expressions": metrics["num_expressions"], "J&F": metrics["J&F"], "J": metrics["J"],
              "F": metrics["F"], "by_kind": metrics["groups"],
              "parameters": sum(p.numel() for p in model.parameters()),
              "train_seconds": None if args.eval_only else round(train_s, 1), "threads": args.threads}
    return write_run_results(out, result, args.eval_only)


def pretrain_once(args: argparse.Namespace, folder: Path) -> Path:
    """The ViT's attribute pre-training (``--pretrain-steps``, not part of the preset) on a fresh tiny Locater,
    saved to ``folder`` (with its ``prepare.json``); an existing result is reused."""
    from lvseg.hub import save_pretrained
    from lvseg.train.presets import get_preset
    from lvseg.train.shapes_pretrain import pretrain_backbone_on_shapes

    if (folder / "prepare.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    torch.set_num_threads(2 * args.threads)
    torch.manual_seed(0)  # as lvseg.train seeds before building the preset's model
    model = get_preset("locater-tiny-shapes").model()
    t0 = time.time()
    record = pretrain_backbone_on_shapes(model, Path(args.data_root), steps=args.pretrain_steps, lr=2e-3, seed=0,
                                         progress=False)
    record["seconds"] = round(time.time() - t0, 1)
    save_pretrained(model, folder)
    (folder / "prepare.json").write_text(json.dumps({"preset": "locater-tiny-shapes", **record}, indent=2) + "\n")
    print(json.dumps(record))
    return folder


def ground_once(args: argparse.Namespace, folder: Path, start: str | None) -> Path:
    """The grounding pre-training of the ViT and the text encoder (``--ground-steps``, not part of the preset,
    :func:`lvseg.train.shapes_grounding.pretrain_locater_grounding`) on ``start`` (a model folder, e.g. the
    attribute pre-training's) or on a fresh tiny Locater, saved to ``folder`` with its ``prepare.json`` (the
    earlier stage's record under ``"before"``); an existing result is reused."""
    import lvseg
    from lvseg.hub import save_pretrained
    from lvseg.train.presets import get_preset
    from lvseg.train.shapes_grounding import pretrain_locater_grounding

    if (folder / "prepare.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    torch.set_num_threads(2 * args.threads)
    torch.manual_seed(0)  # as lvseg.train seeds before building the preset's model
    model = lvseg.load(start, device="cpu") if start else get_preset("locater-tiny-shapes").model()
    before = Path(start) / "prepare.json" if start else None
    record = pretrain_locater_grounding(model, steps=args.ground_steps, seed=0, progress=False)
    save_pretrained(model.train(), folder)
    stage = {"preset": "locater-tiny-shapes", "start": start, "grounding": record,
             "before": json.loads(before.read_text()) if before is not None and before.is_file() else None}
    (folder / "prepare.json").write_text(json.dumps(stage, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("steps", "held_out_pointing", "seconds")}))
    return folder


def _drop_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def run_both(args: argparse.Namespace, argv: list[str]) -> int:
    """The model and its control as two processes side by side; prints both scores and the gap."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    passed = [a for a in argv if a != "--both"]
    for option in ("--output-dir", "--ground-steps", "--pretrained"):  # set per child below
        passed = _drop_option(passed, option)
    start = args.pretrained
    if not args.eval_only and args.pretrain_steps and not start:
        # the ViT's pre-training is text-free and seeded: run it once and start both runs from its result
        start = str(pretrain_once(args, out / "pretrained"))
    if not args.eval_only and args.ground_steps:
        # seeded, and trained on the true expressions: run it once, both runs (the control too) start from it
        start = str(ground_once(args, out / "grounded", start))
    if start:
        passed += ["--pretrained", start]
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
    p.add_argument("--max-steps", type=int, default=None,
                   help="override the preset's 3000 steps (LR drop at 3/4, validation every third)")
    p.add_argument("--lr", type=float, default=None, help="override the preset's learning rate (all groups)")
    p.add_argument("--image-size", type=int, default=None,
                   help="square input size of the ViT (default: the preset's 192, a 12x12 grid of 16-pixel patches; "
                   "256 gives 16x16); a multiple of 16")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="pre-train the ViT on the Shapes attributes for this many steps first (with --both; 0: no)")
    p.add_argument("--pretrained", default=None,
                   help="start from this pre-trained model folder (what --both --pretrain-steps writes to "
                   "<output-dir>/pretrained)")
    p.add_argument("--vit-lr", type=float, default=None,
                   help="learning rate of the ViT (vision_encoder) alone; 0 keeps it frozen, e.g. as --pretrain-steps "
                   "left it (default: the preset's, that of every group)")
    p.add_argument("--text-lr", type=float, default=None,
                   help="learning rate of the text encoder (lang_encoder) alone; 0 keeps it frozen")
    p.add_argument("--ground-steps", type=int, default=0,
                   help="pre-train the ViT and the text encoder for this many steps with a contrastive and a dense "
                   "text-to-patch grounding loss first (with --both; after --pretrain-steps or from --pretrained "
                   "when given; 0: no)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--eval-only", action="store_true", help="score existing runs' best models on test")
    args = p.parse_args(argv)
    if args.pretrain_steps and not (args.both or args.pretrained):
        p.error("--pretrain-steps runs with --both (the pre-training runs once for the model and the control); "
                "for one run, pass --pretrained with the folder of an earlier pre-training")
    if args.ground_steps and not args.both:
        p.error("--ground-steps runs with --both (the pre-training runs once for the model and the control); for one "
                "run, pass --pretrained with the <output-dir>/grounded folder of an earlier --both run")
    if args.image_size is not None and (args.pretrain_steps or args.pretrained or args.ground_steps):
        p.error("--image-size builds a fresh model; it does not combine with --pretrain-steps or --pretrained")
    if args.both:
        return run_both(args, argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(run_one(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

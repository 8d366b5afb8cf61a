"""Pre-train the tiny Shapes CLIP (the frozen backbone of the VLP-RVOS Shapes proof) and measure its retrieval.

    python benchmarks/train_shapes_clip.py --output-dir runs/shapes-clip             # train, save, score
    python benchmarks/train_shapes_clip.py --output-dir runs/shapes-clip --eval-only # score a saved folder

Recipe (:class:`lvseg.train.shapes_clip.ShapesClipConfig`, the sizes the tiny Shapes VLP-RVOS's frozen backbone
reads): a ``transformers`` CLIPModel of ~0.2 M parameters (ViT of width 64, 4 layers, 4 heads, patch 8 on 96x96
frames; text transformer of width 48, 2 layers, 40 positions, a word-level tokenizer of the Shapes words; joint
embedding 32; QuickGELU), trained with CLIP's symmetric InfoNCE loss on (frame, expression) pairs of the 1200
training videos of the Shapes recipes (seed 0; expressions without a motion phrase), batch 48, AdamW 1e-3 with
weight decay 0.1, 50 warm-up steps then cosine decay, 800 steps.

Score: text -> frame retrieval on the 100 held-out videos of the Shapes recipes (seed 1, split valid; their middle
frame): for every expression (no motion phrase), the frames of all 100 videos are ranked by cosine similarity;
``top1`` is the share whose top frame shows what the expression describes, ``own_top1`` the share whose top frame
is the expression's own video. The same architecture with its random initialisation (same seed) is scored too,
and ``chance`` is a random ranking's expected ``top1``. A probe with fixed one-attribute queries (colour, shape,
colour+shape, size+shape, position; :func:`lvseg.train.shapes_clip.attribute_probe`) shows what the encoder tells
apart, and a linear probe of each patch token (after each layer) for the shape, size and colour of the object under
it (:func:`lvseg.train.shapes_clip.patch_attribute_probe`) shows what the dense features that the VLP-RVOS head
reads know; the mean cosine between expressions that differ only in their motion phrase (or colour,
:func:`lvseg.train.shapes_clip.motion_separation`) shows whether the text tower tells motions apart; the pointing
game (:func:`lvseg.train.shapes_clip.pointing_game`) asks whether the patch that matches
an expression best lies on its referent. The numbers go to ``<output-dir>/retrieval.json``.

The saved folder (``config.json``, ``model.safetensors``, tokenizer files, ``training.json``) loads with
``lvseg.models.vlp_rvos.backbones.load_clip(folder)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", required=True, help="the CLIP checkpoint folder to write (or read, --eval-only)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's 800)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    ap.add_argument("--patch", type=int, default=None, help="image patch size (default: the recipe's 8)")
    ap.add_argument(
        "--targets",
        choices=("diagonal", "fits"),
        default=None,
        help="contrastive targets: CLIP's diagonal, or every frame the text fits (default: the recipe's)",
    )
    ap.add_argument(
        "--pool",
        choices=("cls", "mean", "max"),
        default=None,
        help="how an image meets a text: the class token (OpenAI CLIP), the mean of the projected patch tokens, "
        "or the patch token that matches the text best "
        "(default: the recipe's cls)",
    )
    ap.add_argument(
        "--attribute-steps",
        type=int,
        default=None,
        help="steps of dense attribute pre-training of the image tower before the contrastive stage (default: 0)",
    )
    ap.add_argument(
        "--grounding-weight",
        type=float,
        default=None,
        help="weight of the dense text-to-patch grounding loss added to the contrastive stage (default: 0, none)",
    )
    ap.add_argument(
        "--motion-weight",
        type=float,
        default=None,
        help="weight of the text-side motion loss added to the contrastive stage (default: 0, none)",
    )
    ap.add_argument("--num-test", type=int, default=100, help="held-out videos for retrieval (seed 1, valid)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    ap.add_argument("--eval-only", action="store_true", help="score an existing folder, do not train")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer, CLIPModel

    from lvseg.models.vlp_rvos.backbones import load_clip
    from lvseg.train.shapes_clip import (
        ShapesClipConfig,
        ShapesPairs,
        attribute_probe,
        motion_separation,
        patch_attribute_probe,
        pointing_game,
        retrieval_accuracy,
        shapes_clip_model_config,
        train_shapes_clip,
    )
    from lvseg.utils import atomic_write_text

    out = Path(args.output_dir)
    config = ShapesClipConfig()
    if args.steps is not None:
        config.steps = args.steps
    if args.lr is not None:
        config.lr = args.lr
    if args.patch is not None:
        config.patch = args.patch
    if args.targets is not None:
        config.targets = args.targets
    if args.pool is not None:
        config.pool = args.pool
    if args.attribute_steps is not None:
        config.attribute_steps = args.attribute_steps
    if args.grounding_weight is not None:
        config.grounding_weight = args.grounding_weight
    if args.motion_weight is not None:
        config.motion_weight = args.motion_weight
    if not args.eval_only:
        train_shapes_clip(out, config, overwrite=args.overwrite)
    record = json.loads((out / "training.json").read_text())
    config = ShapesClipConfig(**record["config"])
    model = load_clip(out)  # the loader the VLP-RVOS model uses: strict, from the saved folder
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(config.seed)
    random_init = CLIPModel(shapes_clip_model_config(config, tokenizer)).eval()  # the trained one's pooling too
    test = ShapesPairs(1, "valid", args.num_test, config.frames, config.size)
    start = time.time()
    results = {
        "trained": retrieval_accuracy(model, tokenizer, test, context=config.context),
        "random_init": retrieval_accuracy(random_init, tokenizer, test, context=config.context),
        "train_seconds": record["train_seconds"],
        "steps": config.steps,
        "threads": args.threads,
        "command": "python benchmarks/train_shapes_clip.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    results["probe"] = {
        "trained": attribute_probe(model, tokenizer, test, context=config.context),
        "random_init": attribute_probe(random_init, tokenizer, test, context=config.context),
    }
    results["patch_probe"] = {"trained": patch_attribute_probe(model), "random_init": patch_attribute_probe(random_init)}
    results["pointing"] = {
        "trained": pointing_game(model, tokenizer, args.num_test, config.context),
        "random_init": pointing_game(random_init, tokenizer, args.num_test, config.context),
    }
    results["text_separation"] = {
        "trained": motion_separation(model, tokenizer, config.context),
        "random_init": motion_separation(random_init, tokenizer, config.context),
    }
    results["eval_seconds"] = round(time.time() - start, 1)
    atomic_write_text(out / "retrieval.json", json.dumps(results, indent=2) + "\n")
    for name in ("trained", "random_init"):
        r = results[name]
        print(f"{name:12s} top1 {100 * r['top1']:5.1f}%  own_top1 {100 * r['own_top1']:5.1f}%  "
              f"chance {100 * r['chance']:5.1f}%  ({int(r['queries'])} expressions x {int(r['frames'])} frames)")
    for family, r in results["probe"]["trained"].items():
        rnd = results["probe"]["random_init"][family]["top1"]
        print(f"probe {family:13s} trained {100 * r['top1']:5.1f}%  random init {100 * rnd:5.1f}%  "
              f"chance {100 * r['chance']:5.1f}%")
    majority = results["patch_probe"]["trained"]["majority"]
    for layer, r in results["patch_probe"]["trained"].items():
        if layer == "majority":
            continue
        rnd = results["patch_probe"]["random_init"][layer]
        print(f"patch probe {layer}: " + "  ".join(
            f"{k} {100 * v:5.1f}% (random init {100 * rnd[k]:5.1f}%, majority {100 * majority[k]:5.1f}%)"
            for k, v in r.items()))
    for kind, r in results["pointing"]["trained"].items():
        rnd = results["pointing"]["random_init"][kind]["hits"]
        print(f"pointing {kind:17s} trained {100 * r['hits']:5.1f}%  random init {100 * rnd:5.1f}%  "
              f"chance {100 * r['chance']:5.1f}%  ({int(r['expressions'])} expressions)")
    for name in ("trained", "random_init"):
        r = results["text_separation"][name]
        print(f"text cosine between variants ({name}): motion phrases {r['motion']:.3f}, colours {r['color']:.3f}")
    print(f"training: {config.steps} steps in {record['train_seconds']} s on {record['torch_threads']} thread(s)")
    return results


if __name__ == "__main__":
    main()

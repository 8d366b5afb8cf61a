"""Cost of several expressions on one clip: 1, 2 and 4 expressions, per family, side by side in one run.

Usage::

    python benchmarks/multi_expression.py                       # ReferFormer R50, MTTR, Locater; 3 x 192 x 320
    python benchmarks/multi_expression.py --frames 5 --height 360 --width 640
    python benchmarks/multi_expression.py --families locater --frames 8    # ViT-B/16 at 320 x 320, 3 global frames

The Predictor hands a family one clip expanded over the expressions (a view with batch stride 0). Families
whose backbone never sees the text (ReferFormer, MTTR, Locater's ViT) run the backbone once on that clip and share
its features, so only the text-dependent part is paid per expression. The target (issue 19) is

    cost(N) <= cost(1) + (N - 1) * text_part,   text_part = cost(1) - backbone(1)

where ``backbone(1)`` is timed inside the N = 1 pass with forward hooks on the backbone module. The table prints
cost(N), that bound and cost(N) / bound (<= 1 meets the target, up to timing noise). Models are built from the
full-size configs with random weights (speed does not depend on the values), each in its own subprocess;
the N values alternate repeat by repeat so that load on a shared machine hits them alike. LAVT is not listed:
its backbone fuses the text in every stage, so all of it is text-dependent and cost(N) = N * cost(1) is the bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests" / "fixtures" / "referformer" / "tokenizer"
TEXTS = ["the man riding a bike", "a dog jumping over a fence", "the red frisbee", "the person on the left"]


def run_family(family: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import RobertaTokenizerFast

    torch.set_num_threads(args.threads)
    tok = RobertaTokenizerFast.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    if family == "referformer":
        from lvseg.models.referformer.config import ReferFormerConfig
        from lvseg.models.referformer.model import ReferFormer

        config = ReferFormerConfig(backbone="resnet50", max_frames_per_pass=0)
        config.text_encoder["vocab_size"] = max(tok.vocab_size, 512)  # only the embedding table shrinks
        model: torch.nn.Module = ReferFormer(config, tokenizer=tok)
    elif family == "mttr":
        from lvseg.models.mttr.config import MTTRConfig
        from lvseg.models.mttr.model import MTTR

        model = MTTR(MTTRConfig(), tokenizer=tok)
    else:
        import dataclasses

        from lvseg.models.locater.config import LocaterConfig
        from lvseg.models.locater.model import Locater
        from lvseg.train.presets import shapes_wordpiece_tokenizer

        wordpiece = shapes_wordpiece_tokenizer()  # a small WordPiece vocabulary: only the embedding table shrinks
        model = Locater(dataclasses.replace(LocaterConfig(), vocab_size=len(wordpiece)), tokenizer=wordpiece)
    model.eval()
    backbone = model.vision_encoder if family == "locater" else model.backbone
    marks: list[float] = []
    backbone.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter()))
    backbone.register_forward_hook(lambda *_: marks.append(time.perf_counter()))
    clip = torch.randn(1, args.frames, 3, args.height, args.width)
    times: dict[int, list[float]] = {n: [] for n in args.counts}
    backbone_1: list[float] = []
    with torch.no_grad():
        model.segment(clip, TEXTS[:1])  # warm-up (builds the MSDA op if needed)
        for r in range(args.repeat):
            for n in args.counts if r % 2 == 0 else reversed(args.counts):
                marks.clear()
                t0 = time.perf_counter()
                model.segment(clip.expand(n, -1, -1, -1, -1), (TEXTS * n)[:n])
                times[n].append(time.perf_counter() - t0)
                if n == 1:
                    backbone_1.append(sum(marks[i + 1] - marks[i] for i in range(0, len(marks), 2)))
    return {"times": {str(n): statistics.median(v) for n, v in times.items()},
            "backbone_1": statistics.median(backbone_1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["referformer", "mttr", "locater"], choices=["referformer", "mttr", "locater"])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_family(args.child, args)))
        return
    print(f"{args.frames} x {args.height} x {args.width}, {args.threads} threads, median of {args.repeat}")
    print(f"{'family':12s} {'N':>2s} {'cost(N) s':>10s} {'bound s':>9s} {'cost/bound':>10s}   "
          "(bound = cost(1) + (N-1) x (cost(1) - backbone(1)))")
    for family in args.families:
        argv = [f"--frames={args.frames}", f"--height={args.height}", f"--width={args.width}",
                f"--threads={args.threads}", f"--repeat={args.repeat}", "--counts", *map(str, args.counts)]
        out = subprocess.run([sys.executable, __file__, *argv, "--child", family], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{family}: failed\n{out.stderr[-2000:]}")
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        cost1, back1 = res["times"]["1"], res["backbone_1"]
        text_part = cost1 - back1
        for n in args.counts:
            cost = res["times"][str(n)]
            bound = cost1 + (n - 1) * text_part
            print(f"{family:12s} {n:2d} {cost:10.2f} {bound:9.2f} {cost / bound:10.2f}")
        print(f"{'':12s}    backbone(1) {back1:.2f} s = {back1 / cost1:.0%} of cost(1)")


if __name__ == "__main__":
    main()

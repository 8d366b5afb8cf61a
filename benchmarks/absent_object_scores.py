"""What the bundled model's score says about an expression that names no object in the video.

For each generated Shapes video (``make_video(seed, "demo", 0, 16, 96, 96)``), every "the COLOUR SHAPE" expression
that names exactly one object is "present"; as many colour/shape pairs that name no object (drawn with the seed)
are "absent". Prints the mean per-video score of each group and how a threshold would separate them
(docs/predict.md, "What the score means").

Usage::

    python benchmarks/absent_object_scores.py            # 20 videos, CPU
    python benchmarks/absent_object_scores.py --videos 5
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--model", default="referformer-tiny.shapes")
    args = parser.parse_args()
    os.environ.setdefault("LVSEG_MSDA_BACKEND", "reference")

    import lvseg
    from lvseg.data.shapes import COLORS, SHAPES, expression_semantics, make_video

    model = lvseg.load(args.model, device="cpu")
    present: list[float] = []
    absent: list[float] = []
    for seed in range(args.videos):
        video, rgb, _ = make_video(seed, "demo", 0, 16, 96, 96)
        named, unnamed = [], []
        for colour in COLORS:
            for shape in SHAPES:
                text = f"the {colour} {shape}"
                ids = expression_semantics(text, video.objects)
                if ids is not None and len(ids) == 1:
                    named.append(text)
                elif ids is not None and not ids:
                    unnamed.append(text)
        rng = np.random.default_rng(seed)
        unnamed = list(rng.choice(unnamed, size=min(len(unnamed), max(len(named), 1)), replace=False))
        with torch.inference_mode():
            results = model.predict(np.stack(rgb), named + unnamed, progress=False)
        results = results if isinstance(results, list) else [results]
        present += [float(r.scores.mean()) for r in results[: len(named)]]
        absent += [float(r.scores.mean()) for r in results[len(named):]]

    print(f"{args.model}, {args.videos} Shapes videos (16 frames, 96x96)")
    print("| expression names | n | mean score | median | min | max |")
    print("|---|---|---|---|---|---|")
    for label, values in (("an object in the video", present), ("no object in the video", absent)):
        v = np.array(values)
        print(f"| {label} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | {v.min():.3f} | {v.max():.3f} |")
    p, a = np.array(present), np.array(absent)
    print(f"absent scores >= the lowest present score: {np.mean(a >= p.min()):.2f}")
    for threshold in (0.5, 0.6, 0.7):
        print(f"threshold {threshold}: present kept {np.mean(p >= threshold):.2f}, absent kept {np.mean(a >= threshold):.2f}")


if __name__ == "__main__":
    main()
